package resolve

import (
	"context"
	"regexp"
	"slices"
	"strings"

	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/torrc"
)

// LevelFamily is the level of the family lines the server adds (Explain).
const LevelFamily = "family"

// Fleet is what a relay's torrc needs of the whole fleet: which family
// each node is in, the families' relays and keys, and which agents can
// take a family key. Load it once per config generation
// (store.ConfigGeneration); it only reads.
type Fleet struct {
	globalFamily string
	nodeFamily   map[int64]string // nodes with a family setting of their own
	members      map[string][]member
	keys         map[string]*store.FamilyKey
	familyKeys   map[int64]bool // nodes whose agent writes family keys
}

// member is a relay of a family, by its RSA fingerprint.
type member struct {
	relay int64
	fp    string
}

// fingerprintRE is what tor writes in its fingerprint file. Heartbeats
// are checked for it; a value that is not one never reaches a torrc.
var fingerprintRE = regexp.MustCompile(`^[0-9A-F]{40}$`)

// LoadFleet reads the fleet from the store.
func LoadFleet(ctx context.Context, st *store.Store) (*Fleet, error) {
	f := &Fleet{members: map[string][]member{}, keys: map[string]*store.FamilyKey{}, familyKeys: map[int64]bool{}}
	g, nodes, err := st.SettingEverywhere(ctx, settings.Family)
	if err != nil {
		return nil, err
	}
	f.globalFamily = settings.Resolve(map[string]string{settings.Family: g}, nil).Family
	f.nodeFamily = map[int64]string{}
	for id, v := range nodes {
		if settings.CheckFamily(v) == nil {
			f.nodeFamily[id] = v
		}
	}
	rks, err := st.RelayKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range rks {
		if fingerprintRE.MatchString(k.Fingerprint) {
			fam := f.Family(k.NodeID)
			f.members[fam] = append(f.members[fam], member{k.RelayID, k.Fingerprint})
		}
	}
	for fam := range f.members {
		slices.SortFunc(f.members[fam], func(a, b member) int { return strings.Compare(a.fp, b.fp) })
	}
	keys, err := st.FamilyKeys(ctx)
	if err != nil {
		return nil, err
	}
	for i := range keys {
		f.keys[keys[i].Family] = &keys[i]
	}
	ids, err := st.NodesWithFeature(ctx, api.FeatureFamilyKeys)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		f.familyKeys[id] = true
	}
	return f, nil
}

// Family is the family node id's relays are in.
func (f *Fleet) Family(id int64) string {
	if v, ok := f.nodeFamily[id]; ok {
		return v
	}
	return f.globalFamily
}

// Size is the number of relays of family that have reported their
// fingerprint.
func (f *Fleet) Size(family string) int { return len(f.members[family]) }

// KeyName is the file name (less ".secret_family_key") family's key
// takes in a relay's key directory. It stays the same when the key is
// rotated, so tor's sandbox, which cannot open new key file names at
// runtime, is no obstacle to a reload.
func KeyName(family string) string { return "patela-" + family }

// key is the family key node id's relays declare: nil when the family
// has none or the node's agent cannot install it (an agent from before
// family keys, on which tor would exit at the FamilyId line).
func (f *Fleet) key(id int64) *store.FamilyKey {
	if !f.familyKeys[id] {
		return nil
	}
	return f.keys[f.Family(id)]
}

// Keys are the family keys node id is sent (NodeConfig.FamilyKeys).
func (f *Fleet) Keys(id int64) []api.FamilyKey {
	k := f.key(id)
	if k == nil {
		return nil
	}
	return []api.FamilyKey{{Name: KeyName(k.Family), ID: k.ID, Secret: k.Secret}}
}

// Lines are the family lines of relay r, whose merged admin levels are
// admin: FamilyId for the family's key, then MyFamily for every other
// relay of its family (tor's manual asks for both while clients still
// read MyFamily), less those the admin lists already (the admin's own
// MyFamily lines, other operators' relays of the family, stay where they
// are).
func (f *Fleet) Lines(admin *torrc.Config, r *store.Relay) []torrc.Line {
	l := func(k, v string) torrc.Line { return torrc.Line{Op: torrc.OpSet, Key: k, Value: v, Level: LevelFamily} }
	var out []torrc.Line
	if k := f.key(r.NodeID); k != nil {
		out = append(out, l("FamilyId", k.ID))
	}
	members := f.members[f.Family(r.NodeID)]
	if len(members) == 0 {
		return out
	}
	listed := map[string]bool{}
	for _, v := range admin.Values("MyFamily") {
		for _, it := range strings.Split(v, ",") {
			listed[strings.ToUpper(strings.TrimPrefix(strings.TrimSpace(it), "$"))] = true
		}
	}
	out = slices.Grow(out, len(members))
	for _, m := range members {
		if m.relay != r.ID && !listed[m.fp] {
			out = append(out, l("MyFamily", "$"+m.fp))
		}
	}
	return out
}
