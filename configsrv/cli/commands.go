package cli

import (
	"strings"

	"patela/configsrv/settings"
	"patela/internal/api"
	"patela/internal/cmdline"
)

// program is configsrv's command line. A new command is one row here and
// one function `func (e *env) name(fs *flag.FlagSet, args []string) error`
// that defines its flags, calls parse, then does its work.
var program = &cmdline.Program[*env]{
	Name:     "configsrv",
	Globals:  globals,
	Commands: commands,
	Footer: `Commands that only read refuse a database that does not exist.
Exit status: 0 done, 1 failed, 2 usage error.
`,
}

var settingKeys = "KEY is one of " + strings.Join(settings.Keys(), ", ")

var commands = []cmdline.Command[*env]{
	{Words: "init", Args: "--dir DIR", Help: "create the CA, server certificate and biscuit key (never overwritten), and the database", Run: (*env).initKeys},
	{Words: "serve", Args: "(--dir DIR | --tls-cert FILE --tls-key FILE --biscuit-key FILE)", Help: "serve the v1 API over HTTPS until SIGTERM or SIGINT", Run: (*env).serve},

	{Words: "node list", Help: "every node: state, EK hash, relays, sealing, attested release, first and last contact", Run: (*env).nodeList},
	{Words: "node show", Args: "(--default | ID)", Help: "one node: identity, specs, effective settings, relays; --default: the global settings", Run: (*env).nodeShow},
	{Words: "node enable", Args: "ID", Help: "let a node attest and fetch its config", Run: nodeState(api.NodeEnabled)},
	{Words: "node disable", Args: "ID", Help: "refuse a node until it is enabled again", Run: nodeState(api.NodeDisabled)},
	{Words: "node ban", Args: "ID", Help: "refuse a node for good", Run: nodeState(api.NodeBanned)},
	{Words: "node remove", Args: "ID", Help: "delete a node, freeing its relays, addresses and key bundle", Run: (*env).nodeRemove},
	{Words: "node set", Args: "(--default | ID) KEY VALUE", Help: "set a node's value of a setting, or the default's", More: settingKeys, Run: (*env).nodeSet},
	{Words: "node unset", Args: "(--default | ID) KEY", Help: "remove a node's value of a setting, or the default's", More: settingKeys, Run: (*env).nodeUnset},

	{Words: "pool add", Args: "CIDR --gateway IP", Help: "add an address pool relays get their addresses from", Run: (*env).poolAdd},
	{Words: "pool list", Help: "the address pools and how much of each is used", Run: (*env).poolList},
	{Words: "pool remove", Args: "CIDR", Help: "remove a pool no relay uses", Run: (*env).poolRemove},

	{Words: "torrc import", Args: "(FILE | -) (--default | --node ID | --relay NAME)", Help: "check a torrc and store it at one level of the cascade", Run: (*env).torrcImport},
	{Words: "torrc show", Args: "(--default | --node ID | --relay NAME)", Help: "the torrc stored at one level (--json: with its option lines parsed)", Run: (*env).torrcShow},
	{Words: "torrc resolve", Args: "--relay NAME", Help: "the torrc tor on the relay's node runs: levels cascaded, server and agent lines added", Run: (*env).torrcResolve},
	{Words: "torrc diff", Args: "--relay NAME (FILE | -)", Help: "how importing FILE at a relay's level would change its torrc", Run: (*env).torrcDiff},

	{Words: "status", Help: "the fleet at a glance: every node and its relays, state, last contact, release, traffic rates, flags, certificate expiry", Run: (*env).status},
	{Words: "family list", Help: "the relay families: nodes, relays, Happy Families key id", Run: (*env).familyList},
	{Words: "family create", Args: "[--family NAME]", Help: "make the family's key with tor --keygen-family on this host and store it", Run: (*env).familyCreate},
	{Words: "family import", Args: "(FILE | -) [--family NAME]", Help: "store a NAME.secret_family_key made elsewhere as the family's key", Run: (*env).familyImport},
	{Words: "family rotate", Args: "[--family NAME] [--import FILE]", Help: "replace the family's key with a new one; relays reload with it", Run: (*env).familyRotate},
	{Words: "family remove", Args: "[--family NAME] --yes", Help: "delete the family's key: relays keep MyFamily, drop FamilyId", Run: (*env).familyRemove},

	{Words: "relay list", Help: "every relay: node, uid, addresses, state, fingerprint", Run: (*env).relayList},
	{Words: "release add", Args: "FILE", Help: "register an approved release (stimage release create): nodes booting it get its approval", Run: (*env).releaseAdd},
	{Words: "release list", Help: "the releases: kind, active or retired, policy PCRs", Run: (*env).releaseList},
	{Words: "release retire", Args: "NAME", Help: "stop serving a release's approval: nodes booting it are told which release to boot", Run: (*env).releaseRetire},
	{Words: "rollout start", Args: "RELEASE [--max-unavailable N]", Help: "reboot the enabled nodes not on RELEASE into it, N at a time (serve runs it)", Run: (*env).rolloutStart},
	{Words: "rollout status", Help: "the running (or last) rollout: each node's turn, what it ran and runs", Run: (*env).rolloutStatus},
	{Words: "rollout stop", Help: "stop the running rollout: no further node is asked to reboot", Run: (*env).rolloutStop},
	{Words: "keys show", Args: "NODE_ID", Help: "version, size and update time of the node's mirrored key bundle", Run: (*env).keysShow},
	{Words: "keys drop", Args: "NODE_ID --yes", Help: "delete it (after a TPM clear): the node's relays get NEW identities", Run: (*env).keysDrop},
	{Words: "audit", Help: "the audit log, newest first", Run: (*env).auditLog},
	{Words: "backup", Args: "FILE", Help: "write a consistent copy of the database to the new FILE, also while serve runs (README: restore)", Run: (*env).backup},
}
