package torrc

import "strings"

// aliases are the torrc spellings tor maps to another option: the entries of
// option_abbrevs_ in tor's src/app/config/config.c that apply to a torrc
// (those flagged command-line-only, "l" and "HashedControlPassword", do not).
// An alias whose target is not in torOptions names an option tor has made
// obsolete and ignores; Parse refuses it rather than write a line that does
// nothing.
var aliases = map[string]string{
	// PLURAL(X): X → Xs.
	"AuthDirBadDirCC":          "AuthDirBadDirCCs",
	"AuthDirBadExitCC":         "AuthDirBadExitCCs",
	"AuthDirInvalidCC":         "AuthDirInvalidCCs",
	"AuthDirMiddleOnlyCC":      "AuthDirMiddleOnlyCCs",
	"AuthDirRejectCC":          "AuthDirRejectCCs",
	"EntryNode":                "EntryNodes",
	"ExcludeNode":              "ExcludeNodes",
	"FirewallPort":             "FirewallPorts",
	"LongLivedPort":            "LongLivedPorts",
	"HiddenServiceNode":        "HiddenServiceNodes",
	"HiddenServiceExcludeNode": "HiddenServiceExcludeNodes",
	"NumCPU":                   "NumCPUs",
	"RendNode":                 "RendNodes",
	"RecommendedPackage":       "RecommendedPackages",
	"RendExcludeNode":          "RendExcludeNodes",
	"StrictEntryNode":          "StrictEntryNodes",
	"StrictExitNode":           "StrictExitNodes",
	"StrictNode":               "StrictNodes",
	// PLURAL(ExitNode) left the table in 0.3.x; tor still takes ExitNode as
	// an unambiguous prefix of ExitNodes, and old torrcs use it.
	"ExitNode": "ExitNodes",

	"AllowUnverifiedNodes":           "AllowInvalidNodes",
	"AutomapHostSuffixes":            "AutomapHostsSuffixes",
	"AutomapHostOnResolve":           "AutomapHostsOnResolve",
	"BandwidthRateBytes":             "BandwidthRate",
	"BandwidthBurstBytes":            "BandwidthBurst",
	"DirFetchPostPeriod":             "StatusFetchPeriod",
	"DirServer":                      "DirAuthority",
	"MaxConn":                        "ConnLimit",
	"MaxMemInCellQueues":             "MaxMemInQueues",
	"ORBindAddress":                  "ORListenAddress",
	"DirBindAddress":                 "DirListenAddress",
	"SocksBindAddress":               "SocksListenAddress",
	"UseHelperNodes":                 "UseEntryGuards",
	"NumHelperNodes":                 "NumEntryGuards",
	"UseEntryNodes":                  "UseEntryGuards",
	"NumEntryNodes":                  "NumEntryGuards",
	"ResolvConf":                     "ServerDNSResolvConfFile",
	"SearchDomains":                  "ServerDNSSearchDomains",
	"ServerDNSAllowBrokenResolvConf": "ServerDNSAllowBrokenConfig",
	"PreferTunnelledDirConns":        "PreferTunneledDirConns",
	"BridgeAuthoritativeDirectory":   "BridgeAuthoritativeDir",
	"VirtualAddrNetwork":             "VirtualAddrNetworkIPv4",
	"SocksSocketsGroupWritable":      "UnixSocksGroupWritable",
	"_HSLayer2Nodes":                 "HSLayer2Nodes",
	"_HSLayer3Nodes":                 "HSLayer3Nodes",

	// DOWNLOAD_SCHEDULE(X): XDownloadSchedule → XDownloadInitialDelay.
	"ClientBootstrapConsensusAuthorityDownloadSchedule":     "ClientBootstrapConsensusAuthorityDownloadInitialDelay",
	"ClientBootstrapConsensusAuthorityOnlyDownloadSchedule": "ClientBootstrapConsensusAuthorityOnlyDownloadInitialDelay",
	"ClientBootstrapConsensusFallbackDownloadSchedule":      "ClientBootstrapConsensusFallbackDownloadInitialDelay",
	"TestingBridgeDownloadSchedule":                         "TestingBridgeDownloadInitialDelay",
	"TestingBridgeBootstrapDownloadSchedule":                "TestingBridgeBootstrapDownloadInitialDelay",
	"TestingClientDownloadSchedule":                         "TestingClientDownloadInitialDelay",
	"TestingClientConsensusDownloadSchedule":                "TestingClientConsensusDownloadInitialDelay",
	"TestingServerDownloadSchedule":                         "TestingServerDownloadInitialDelay",
	"TestingServerConsensusDownloadSchedule":                "TestingServerConsensusDownloadInitialDelay",
}

// immutable are the options tor refuses to change on SIGHUP (flagged
// CFLG_IMMUTABLE in tor's config.c, plus the hardware-acceleration options it
// reads only at start), and the listener and address options, which tor
// could rebind on SIGHUP but patela changes only with a restart to be safe.
var immutable = []string{
	"DataDirectory", "CacheDirectory", "KeyDirectory", "FamilyKeyDirectory",
	"User", "Sandbox", "NoExec", "RunAsDaemon", "PidFile", "SyslogIdentityTag",
	"DisableAllSwap", "DisableDebuggerAttachment", "KeepBindCapabilities",
	"HardwareAccel", "AccelName", "AccelDir", "TokenBucketRefillInterval",
	"HiddenServiceSingleHopMode", "HiddenServiceNonAnonymousMode", "TestingTorNetwork",

	"ORPort", "Address",
	"OutboundBindAddress", "OutboundBindAddressExit", "OutboundBindAddressOR", "OutboundBindAddressPT",
}

// sandboxImmutable are the options tor refuses to change on SIGHUP while
// Sandbox is active (options_check_transition_cb in tor's config.c).
var sandboxImmutable = []string{
	"Address", "ServerDNSResolvConfFile", "DirPortFrontPage", "CookieAuthFile",
	"ExtORPortCookieAuthFile", "Log", "ConnLimit",
}

// groups are options tor keeps in one shared list, so they cascade as one:
// an onion service is a HiddenServiceDir line followed by its own options,
// and their relative order is the meaning (RendConfigLines in tor's config.c).
var groups = map[string]string{}

func init() {
	for _, k := range []string{
		"HiddenServiceDir", "HiddenServiceDirGroupReadable", "HiddenServicePort",
		"HiddenServiceVersion", "HiddenServiceAllowUnknownPorts", "HiddenServiceMaxStreams",
		"HiddenServiceMaxStreamsCloseCircuit", "HiddenServiceNumIntroductionPoints",
		"HiddenServiceExportCircuitID", "HiddenServiceEnableIntroDoSDefense",
		"HiddenServiceEnableIntroDoSRatePerSec", "HiddenServiceEnableIntroDoSBurstPerSec",
		"HiddenServiceOnionBalanceInstance", "HiddenServicePoWDefensesEnabled",
		"HiddenServicePoWQueueRate", "HiddenServicePoWQueueBurst",
	} {
		groups[k] = "HiddenServiceDir"
	}
}

var (
	canonical     = map[string]string{} // lower-case name or alias → tor's spelling
	obsolete      = map[string]string{} // lower-case alias → obsolete target
	immutableSet  = map[string]bool{}
	sandboxImmSet = map[string]bool{}
)

func init() {
	for _, n := range torOptions {
		canonical[lower(n)] = n
	}
	for a, t := range aliases {
		if _, real := canonical[lower(a)]; real {
			continue // never shadow a real option
		}
		if c, ok := canonical[lower(t)]; ok {
			canonical[lower(a)] = c
		} else {
			obsolete[lower(a)] = t
		}
	}
	for _, s := range []struct {
		names []string
		set   map[string]bool
	}{{immutable, immutableSet}, {sandboxImmutable, sandboxImmSet}} {
		for _, n := range s.names {
			// Options a given tor build lacks (HardwareAccel without
			// OpenSSL engines, say) are simply never seen.
			if c, ok := canonical[lower(n)]; ok {
				s.set[c] = true
			}
		}
	}
}

// Canonical returns tor's spelling of an option name or alias, matched
// case-insensitively; ok is false for names tor does not know, tor's
// internal "__" options, and aliases of options tor has made obsolete.
func Canonical(name string) (string, bool) {
	if strings.HasPrefix(name, "__") {
		return "", false
	}
	// Fold ASCII case only, as tor's strcasecmp does, into a stack buffer:
	// this lookup runs for every line parsed. No name is that long.
	var buf [64]byte
	if len(name) > len(buf) {
		return "", false
	}
	c, ok := canonical[string(foldASCII(buf[:0], name))]
	return c, ok
}

// foldASCII appends s to b with ASCII letters in lower case.
func foldASCII(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

func lower(s string) string { return string(foldASCII(nil, s)) }

// group is the cascade unit an option belongs to.
func group(key string) string {
	if g, ok := groups[key]; ok {
		return g
	}
	return key
}
