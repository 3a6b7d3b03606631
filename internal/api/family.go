package api

// The relay family on the wire (docs/protocol.md, "Relay family"): the
// agent says in its specs that it writes family keys, the server then
// sends the keys with the config and names them in the relays' FamilyId
// lines, and the heartbeat says which served torrc each relay runs.

// FeatureFamilyKeys in Specs.Features: the agent writes NodeConfig's
// FamilyKeys into each relay's key directory before tor sees a FamilyId,
// and refuses a relay whose FamilyId has no key.
const FeatureFamilyKeys = "family_keys"

// FamilyKey is one Happy Families key: tor's 64-byte expanded ed25519
// secret, the id FamilyId names (base64 of its public key, 43
// characters), and Name, the file name it takes in a key directory
// (Name + ".secret_family_key").
type FamilyKey struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}
