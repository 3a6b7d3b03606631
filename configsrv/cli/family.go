package cli

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"time"

	"patela/configsrv/resolve"
	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/configsrv/tortool"
	"patela/internal/cmdline"
	"patela/internal/familykey"
)

// The family commands keep each family's Happy Families key. The secret
// is never printed: only its family id, which is public (every relay
// publishes it).

// maxFamily is a family size above which the relays' descriptors, with a
// MyFamily entry of 42 bytes per member, come near the 20,000 bytes the
// directory authorities take (MAX_DESCRIPTOR_UPLOAD_SIZE in tor).
const maxFamily = 300

// familyFlag defines --family NAME (default: the global family setting,
// else fleet).
func familyFlag(fs *flag.FlagSet) *string {
	return fs.String("family", "", "the family `NAME` (default: the global family setting, else "+settings.DefaultFamily+")")
}

// family resolves a --family value.
func (e *env) family(st *store.Store, name string) (string, error) {
	if name != "" {
		return name, settings.CheckFamily(name)
	}
	g, _, err := st.Settings(e.ctx, 0)
	if err != nil {
		return "", err
	}
	return settings.Resolve(g, nil).Family, nil
}

func torFlag(fs *flag.FlagSet) *string {
	return fs.String("tor", "tor", "the tor binary `PATH`")
}

// newKey is a family key made by tor on this host, or read from FILE.
func (e *env) newKey(family, file, tor string) (*store.FamilyKey, error) {
	k := &store.FamilyKey{Family: family, Created: time.Now()}
	if file != "" {
		data, err := e.read(file)
		if err != nil {
			return nil, err
		}
		k.Secret, err = familykey.Parse(data)
		clear(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (make one with `tor --keygen-family NAME`: NAME.secret_family_key)", file, err)
		}
		k.ID, _ = familykey.ID(k.Secret)
		k.Origin = store.OriginImported
		return k, nil
	}
	bin, err := tortool.Find(tor)
	if err != nil {
		return nil, fmt.Errorf("%w; or make the key elsewhere and `configsrv family import FILE`", err)
	}
	if k.Secret, k.ID, err = tortool.KeygenFamily(e.ctx, bin); err != nil {
		return nil, err
	}
	k.Origin = store.OriginCreated
	return k, nil
}

// putKey stores a new key for a family (replace: instead of its key).
func (e *env) putKey(fs *flag.FlagSet, args []string, file bool, replace bool) error {
	fam := familyFlag(fs)
	tor := torFlag(fs)
	var imp *string
	if replace {
		imp = fs.String("import", "", "take the new key from `FILE` (or - for stdin) instead of making one with tor")
	}
	n := 0
	if file {
		n = 1
	}
	pos, err := parse(fs, args, n, n)
	if err != nil {
		return err
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	family, err := e.family(st, *fam)
	if err != nil {
		return err
	}
	src := ""
	switch {
	case file:
		src = pos[0]
	case imp != nil:
		src = *imp
	}
	k, err := e.newKey(family, src, *tor)
	if err != nil {
		return err
	}
	defer clear(k.Secret)
	old, err := st.PutFamilyKey(e.ctx, k, replace)
	switch {
	case errors.Is(err, store.ErrExists) && !replace:
		return fmt.Errorf("%w; `configsrv family rotate` replaces it", err)
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w; `configsrv family create` makes one", err)
	case err != nil:
		return err
	}
	action, details := "family.create", "family id "+k.ID
	if k.Origin == store.OriginImported {
		action = "family.import"
	}
	if replace {
		action, details = "family.rotate", fmt.Sprintf("family id %s -> %s (%s)", old.ID, k.ID, k.Origin)
	}
	msg := fmt.Sprintf("family %s: key %s %s; its relays get FamilyId %s at their next config fetch", family, k.ID, k.Origin, k.ID)
	if replace {
		msg = fmt.Sprintf("family %s: key %s replaced by %s; its relays reload with the new key at their next config fetch", family, old.ID, k.ID)
	}
	return e.done(nil, action, "family:"+family, details, msg)
}

func (e *env) familyCreate(fs *flag.FlagSet, args []string) error {
	return e.putKey(fs, args, false, false)
}

func (e *env) familyImport(fs *flag.FlagSet, args []string) error {
	return e.putKey(fs, args, true, false)
}

func (e *env) familyRotate(fs *flag.FlagSet, args []string) error {
	return e.putKey(fs, args, false, true)
}

func (e *env) familyRemove(fs *flag.FlagSet, args []string) error {
	fam := familyFlag(fs)
	yes := fs.Bool("yes", false, "confirm: the family's relays stop declaring FamilyId (MyFamily stays)")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if !*yes {
		return cmdline.Usagef("this deletes the family key; its relays stop declaring FamilyId and keep only MyFamily. Run again with --yes to do it")
	}
	st, err := e.open(toRead)
	if err != nil {
		return err
	}
	family, err := e.family(st, *fam)
	if err != nil {
		return err
	}
	k, err := st.RemoveFamilyKey(e.ctx, family)
	if err != nil {
		return err
	}
	clear(k.Secret)
	return e.done(nil, "family.remove", "family:"+family, "family id "+k.ID,
		fmt.Sprintf("family %s: key %s removed; its relays drop FamilyId at their next config fetch", family, k.ID))
}

// familyView is one row of `family list`.
type familyView struct {
	Family  string `json:"family"`
	Nodes   int    `json:"nodes"`
	Relays  int    `json:"relays"` // relays that reported a fingerprint (MyFamily members)
	ID      string `json:"family_id,omitempty"`
	Origin  string `json:"origin,omitempty"`
	Created string `json:"created,omitempty"`
	Warning string `json:"warning,omitempty"`
}

func (e *env) familyList(fs *flag.FlagSet, args []string) error {
	return list(e, fs, args, func(st *store.Store) ([]familyView, error) {
		fleet, err := resolve.LoadFleet(e.ctx, st)
		if err != nil {
			return nil, err
		}
		nodes, err := st.Nodes(e.ctx)
		if err != nil {
			return nil, err
		}
		keys, err := st.FamilyKeys(e.ctx)
		if err != nil {
			return nil, err
		}
		byName := map[string]*familyView{}
		var order []string
		get := func(f string) *familyView {
			if v, ok := byName[f]; ok {
				return v
			}
			v := &familyView{Family: f, Relays: fleet.Size(f)}
			byName[f] = v
			order = append(order, f)
			return v
		}
		for _, n := range nodes {
			if n.Relays > 0 {
				get(fleet.Family(n.ID)).Nodes++
			}
		}
		for _, k := range keys {
			v := get(k.Family)
			v.ID, v.Origin, v.Created = k.ID, k.Origin, fmtTime(k.Created)
		}
		slices.Sort(order)
		out := make([]familyView, 0, len(order))
		for _, f := range order {
			v := byName[f]
			if v.Relays > maxFamily {
				v.Warning = fmt.Sprintf("%d relays: MyFamily brings descriptors near the directory authorities' 20,000-byte limit; split with the family setting", v.Relays)
			}
			out = append(out, *v)
		}
		return out, nil
	}, "FAMILY\tNODES\tRELAYS\tFAMILY ID\tORIGIN\tCREATED\tWARNING", func(v familyView) []string {
		d := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		return []string{v.Family, strconv.Itoa(v.Nodes), strconv.Itoa(v.Relays), d(v.ID), d(v.Origin), d(v.Created), d(v.Warning)}
	})
}
