package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"patela/configsrv/alloc"
	"patela/configsrv/settings"
	"patela/internal/api"
)

// Pool is a range of relay addresses with its gateway.
type Pool struct {
	ID      int64        `json:"id"`
	CIDR    netip.Prefix `json:"cidr"`
	Gateway netip.Addr   `json:"gateway"`
	Used    int          `json:"used"`
	Size    uint64       `json:"size"` // capped at 2^63 for IPv6
}

// Family is 4 or 6.
func (p Pool) Family() int {
	if p.CIDR.Addr().Is4() {
		return 4
	}
	return 6
}

// CheckPool validates a pool definition: a canonical prefix of either
// family with a gateway of the same family inside it and at least one
// address left to hand out.
func CheckPool(cidr netip.Prefix, gw netip.Addr) error {
	if !cidr.IsValid() || cidr != cidr.Masked() {
		return fmt.Errorf("%s is not a network prefix (host bits set; use %s)", cidr, cidr.Masked())
	}
	if cidr.Addr().Is4In6() || gw.Is4In6() {
		return errors.New("IPv4-mapped IPv6 addresses are not allowed")
	}
	if gw.Zone() != "" || !cidr.Contains(gw) {
		return fmt.Errorf("gateway %s is not inside %s", gw, cidr)
	}
	if gw == cidr.Addr() {
		return fmt.Errorf("gateway %s is the network address of %s", gw, cidr)
	}
	if alloc.Size(cidr, 1<<63) == 0 {
		return fmt.Errorf("%s has no address left besides the network address and gateway", cidr)
	}
	return nil
}

// AddPool adds an address pool. Pools may not overlap.
func (s *Store) AddPool(ctx context.Context, cidr netip.Prefix, gw netip.Addr, now time.Time) error {
	if err := CheckPool(cidr, gw); err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		pools, err := poolsQ(ctx, tx)
		if err != nil {
			return err
		}
		for _, p := range pools {
			if p.CIDR == cidr {
				return fmt.Errorf("pool %s: %w", cidr, ErrExists)
			}
			if p.CIDR.Overlaps(cidr) {
				return fmt.Errorf("pool %s overlaps pool %s", cidr, p.CIDR)
			}
		}
		fam := 6
		if cidr.Addr().Is4() {
			fam = 4
		}
		_, err = tx.Exec(`INSERT INTO pools(cidr, family, gateway, created) VALUES (?, ?, ?, ?)`,
			cidr.String(), fam, gw.String(), unix(now))
		return err
	})
}

// Pools lists the pools by id with their usage.
func (s *Store) Pools(ctx context.Context) ([]Pool, error) {
	return poolsQ(ctx, s)
}

func poolsQ(ctx context.Context, q querier) ([]Pool, error) {
	return queryAll(ctx, q, func(r scanner) (*Pool, error) {
		var p Pool
		var c, g string
		if err := r.Scan(&p.ID, &c, &g, &p.Used); err != nil {
			return nil, err
		}
		if err := p.parse(c, g); err != nil {
			return nil, err
		}
		p.Size = alloc.Size(p.CIDR, 1<<63)
		return &p, nil
	}, `SELECT p.id, p.cidr, p.gateway,
		(SELECT count(*) FROM relays WHERE ipv4_pool = p.id) + (SELECT count(*) FROM relays WHERE ipv6_pool = p.id)
		FROM pools p ORDER BY p.id`)
}

// parse sets the pool's prefix and gateway from their stored text.
func (p *Pool) parse(cidr, gateway string) (err error) {
	if p.CIDR, err = netip.ParsePrefix(cidr); err != nil {
		return fmt.Errorf("pool %d: %w", p.ID, err)
	}
	if p.Gateway, err = netip.ParseAddr(gateway); err != nil {
		return fmt.Errorf("pool %d: %w", p.ID, err)
	}
	return nil
}

// RemovePool removes a pool no relay uses.
func (s *Store) RemovePool(ctx context.Context, cidr netip.Prefix) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var id int64
		err := tx.QueryRow(`SELECT id FROM pools WHERE cidr = ?`, cidr.String()).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("pool %s: %w", cidr, ErrNotFound)
		}
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM relays WHERE ipv4_pool = ? OR ipv6_pool = ?`, id, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("pool %s: %d addresses %w by relays", cidr, n, ErrInUse)
		}
		_, err = tx.Exec(`DELETE FROM pools WHERE id = ?`, id)
		return err
	})
}

// Relay is one tor instance of a node.
type Relay struct {
	ID          int64        `json:"id"`
	NodeID      int64        `json:"node_id"`
	Name        string       `json:"name"`
	UID         int          `json:"uid"`
	IPv4        netip.Prefix `json:"ipv4"`
	IPv6        netip.Prefix `json:"ipv6"` // invalid when the relay has none
	ORPort      int          `json:"or_port"`
	Torrc       string       `json:"-"`
	Fingerprint string       `json:"fingerprint"`
	Ed25519ID   string       `json:"ed25519_id"`
	State       string       `json:"state"`
	Restarts    int          `json:"restarts"`
	ReportedAt  time.Time    `json:"reported_at"`
	// What the node reports of its defences: options of the served torrc
	// it refused (not on its allowlist), and keys not yet saved.
	RefusedOptions []string `json:"refused_options"`
	KeysUnsaved    bool     `json:"keys_unsaved"`
	// TorrcApplied is the served torrc's sha256 the agent last said the
	// relay runs ("" from agents that do not say); TorrcDiffers, that it
	// was not the one served then.
	TorrcApplied string `json:"torrc_applied"`
	TorrcDiffers bool   `json:"torrc_differs"`
	// Alarms are what the listings warn of (Store.Alarms fills them).
	Alarms []string `json:"alarms,omitempty"`
	// Gateways of the relay's pools.
	IPv4Gateway netip.Addr `json:"-"`
	IPv6Gateway netip.Addr `json:"-"`
}

// Relays lists the relays of node nodeID (all relays when 0), by node and uid.
func (s *Store) Relays(ctx context.Context, nodeID int64) ([]Relay, error) {
	q := `SELECT r.id, r.node_id, r.idx, r.name, r.ipv4, p4.cidr, p4.gateway, r.ipv6, p6.cidr, p6.gateway,
		r.or_port, r.torrc, r.fingerprint, r.ed25519_id, r.run_state, r.restarts, r.reported_at,
		r.refused_options, r.keys_unsaved, r.torrc_applied, r.torrc_differs
		FROM relays r JOIN pools p4 ON p4.id = r.ipv4_pool LEFT JOIN pools p6 ON p6.id = r.ipv6_pool`
	var args []any
	if nodeID != 0 {
		q += ` WHERE r.node_id = ?`
		args = append(args, nodeID)
	}
	return queryAll(ctx, s, scanRelay, q+` ORDER BY r.node_id, r.idx`, args...)
}

// RelayByName returns the relay called name.
func (s *Store) RelayByName(ctx context.Context, name string) (*Relay, error) {
	r, err := scanRelay(s.queryRow(ctx, `SELECT r.id, r.node_id, r.idx, r.name, r.ipv4, p4.cidr, p4.gateway, r.ipv6, p6.cidr, p6.gateway,
		r.or_port, r.torrc, r.fingerprint, r.ed25519_id, r.run_state, r.restarts, r.reported_at,
		r.refused_options, r.keys_unsaved, r.torrc_applied, r.torrc_differs
		FROM relays r JOIN pools p4 ON p4.id = r.ipv4_pool LEFT JOIN pools p6 ON p6.id = r.ipv6_pool
		WHERE r.name = ?`, name))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("relay %q: %w", name, ErrNotFound)
	}
	return r, err
}

func scanRelay(sc scanner) (*Relay, error) {
	var r Relay
	var idx int
	var v4, p4, g4 string
	var v6, p6, g6 sql.NullString
	var rep sql.NullInt64
	var refused string
	err := sc.Scan(&r.ID, &r.NodeID, &idx, &r.Name, &v4, &p4, &g4, &v6, &p6, &g6,
		&r.ORPort, &r.Torrc, &r.Fingerprint, &r.Ed25519ID, &r.State, &r.Restarts, &rep,
		&refused, &r.KeysUnsaved, &r.TorrcApplied, &r.TorrcDiffers)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	r.UID = alloc.FirstUID + idx
	r.ReportedAt = fromUnix(rep)
	r.RefusedOptions = []string{}
	if refused != "" {
		r.RefusedOptions = strings.Split(refused, ",")
	}
	if r.IPv4, r.IPv4Gateway, err = addrIn(v4, p4, g4); err != nil {
		return nil, fmt.Errorf("relay %s: %w", r.Name, err)
	}
	if v6.Valid {
		if r.IPv6, r.IPv6Gateway, err = addrIn(v6.String, p6.String, g6.String); err != nil {
			return nil, fmt.Errorf("relay %s: %w", r.Name, err)
		}
	}
	return &r, nil
}

// addrIn gives the address with its pool's prefix length, and the gateway.
func addrIn(addr, pool, gw string) (netip.Prefix, netip.Addr, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	g, err := netip.ParseAddr(gw)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	return netip.PrefixFrom(a, p.Bits()), g, nil
}

// Allocation is what Allocate did.
type Allocation struct {
	Before, After int // the node's relays before and after
	Wanted        int // what the allocation rules give the node
	// Short says why After < Wanted: the address pools ran out.
	Short error // wraps ErrExhausted; nil when every relay was placed
}

// Allocate records the node's specs and, in the same transaction, adds or
// removes relays so the node has the count the allocation rules give, or
// as many as the address pools can hold (a relay needs an IPv4 address;
// it gets an IPv6 one when an IPv6 pool has room, later if not).
func (s *Store) Allocate(ctx context.Context, nodeID int64, sp *api.Specs, now time.Time) (Allocation, error) {
	var a Allocation
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.txLocked(ctx, func(tx *sql.Tx) error {
		if err := nodeExists(tx, nodeID); err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT count(*) FROM relays WHERE node_id = ?`, nodeID).Scan(&a.Before); err != nil {
			return err
		}
		if err := setFeaturesTx(tx, nodeID, sp.Features); err != nil {
			return err
		}
		g, n, err := settingsQ(ctx, tx, nodeID)
		if err != nil {
			return err
		}
		eff := settings.Resolve(g, n)
		a.Wanted = alloc.RelayCount(sp.CPUs, sp.MemoryBytes, eff.RelayMemoryMB, eff.MaxRelays)
		if _, err := tx.Exec(`UPDATE nodes SET cpus = ?, memory_bytes = ?, cpu_model = ?, last_seen = ?, relays_wanted = ? WHERE id = ?`,
			sp.CPUs, int64(min(sp.MemoryBytes, 1<<63-1)), sp.CPUModel, unix(now), a.Wanted, nodeID); err != nil {
			return err
		}
		if a.After, a.Short, err = s.resize(ctx, tx, nodeID, a.Wanted, now); err != nil {
			return err
		}
		// Our own writes bumped the generation: record where the cached
		// allocation state now stands, for the next allocation.
		return tx.QueryRow(`SELECT n FROM config_generation WHERE id = 1`).Scan(&s.alloc.gen)
	})
	if err != nil {
		s.alloc = nil // partly applied to the cache, rolled back in the database
		return Allocation{}, err
	}
	return a, nil
}

type relayRow struct {
	id   int64
	idx  int
	name string
	ipv4 string
	ipv6 sql.NullString
	p4   int64
	p6   sql.NullInt64
}

// resize makes node nodeID own want relays, or as many as the pools
// hold: it drops those of highest index, gives missing IPv6 addresses
// where an IPv6 pool has room, and adds relays with the lowest free index,
// name and addresses. It returns the count it reached and, when short of
// want, why.
func (s *Store) resize(ctx context.Context, tx *sql.Tx, nodeID int64, want int, now time.Time) (placed int, short, err error) {
	a, err := s.allocState(tx)
	if err != nil {
		return 0, nil, err
	}
	have, err := queryAll(ctx, tx, func(sc scanner) (*relayRow, error) {
		var r relayRow
		return &r, sc.Scan(&r.id, &r.idx, &r.name, &r.ipv4, &r.ipv6, &r.p4, &r.p6)
	}, `SELECT id, idx, name, ipv4, ipv6, ipv4_pool, ipv6_pool FROM relays WHERE node_id = ? ORDER BY idx`, nodeID)
	if err != nil {
		return 0, nil, err
	}
	if len(have) == want && (len(a.v6) == 0 || allHaveV6(have)) {
		return want, nil, nil
	}
	if err := a.load(ctx, tx); err != nil {
		return 0, nil, err
	}
	for len(have) > want {
		last := have[len(have)-1]
		if _, err := tx.Exec(`DELETE FROM relays WHERE id = ?`, last.id); err != nil {
			return 0, nil, err
		}
		a.freeName(last.name)
		a.freeAddr(last.p4, last.ipv4)
		if last.ipv6.Valid {
			a.freeAddr(last.p6.Int64, last.ipv6.String)
		}
		have = have[:len(have)-1]
	}
	// v6 takes the next IPv6 address: none without an IPv6 pool, or once
	// they are full (the relay gets one when room appears).
	var v6full error
	v6 := func() (sql.NullString, sql.NullInt64) {
		if len(a.v6) == 0 || v6full != nil {
			return sql.NullString{}, sql.NullInt64{}
		}
		ad, pid, err := a.addr(a.v6, "IPv6")
		if err != nil {
			v6full = err
			return sql.NullString{}, sql.NullInt64{}
		}
		return sql.NullString{String: ad.String(), Valid: true}, sql.NullInt64{Int64: pid, Valid: true}
	}
	for _, r := range have {
		if r.ipv6.Valid {
			continue
		}
		addr6, pid6 := v6()
		if !addr6.Valid {
			break
		}
		if _, err := tx.Exec(`UPDATE relays SET ipv6 = ?, ipv6_pool = ? WHERE id = ?`, addr6, pid6, r.id); err != nil {
			return 0, nil, err
		}
	}
	usedIdx := map[int]bool{}
	for _, r := range have {
		usedIdx[r.idx] = true
	}
	n := len(have)
	for ; n < want; n++ {
		addr4, pid4, err := a.addr(a.v4, "IPv4")
		if err != nil {
			return n, err, nil // the pools hold no more relays
		}
		idx := alloc.FreeIndex(usedIdx)
		usedIdx[idx] = true
		addr6, pid6 := v6()
		if _, err := tx.Exec(`INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, created)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			nodeID, idx, a.name(), addr4.String(), pid4, addr6, pid6, alloc.ORPort, unix(now)); err != nil {
			return 0, nil, err
		}
	}
	return n, nil, nil
}

func allHaveV6(rs []relayRow) bool {
	for _, r := range rs {
		if !r.ipv6.Valid {
			return false
		}
	}
	return true
}

// allocState is what allocation needs to know of the whole fleet: names
// and addresses in use, with hints below which everything is taken. It is
// loaded once and then kept in step with this process's own allocations;
// the config generation (bumped by triggers on every relay or pool change,
// by any process) says when it is stale. Only used under s.wmu, inside a
// write transaction, so no other writer can interleave.
type allocState struct {
	gen    int64 // generation after the last commit it reflects; -1: invalid
	v4, v6 []Pool
	loaded bool
	names  map[string]bool
	hint   int // every name index below hint is in use
	pools  map[int64]*poolUse
}

type poolUse struct {
	used map[netip.Addr]bool
	hint netip.Addr // every address of the pool below hint is in use or reserved
}

// allocState returns the cached state if it matches the database, or a
// fresh one (pools only; sets are loaded on first need).
func (s *Store) allocState(tx *sql.Tx) (*allocState, error) {
	var gen int64
	if err := tx.QueryRow(`SELECT n FROM config_generation WHERE id = 1`).Scan(&gen); err != nil {
		return nil, err
	}
	if s.alloc != nil && s.alloc.gen == gen {
		return s.alloc, nil
	}
	a := &allocState{gen: gen}
	rows, err := tx.Query(`SELECT id, cidr, gateway FROM pools ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var p Pool
		var c, g string
		if err := rows.Scan(&p.ID, &c, &g); err != nil {
			return nil, err
		}
		if err := p.parse(c, g); err != nil {
			return nil, err
		}
		if p.Family() == 4 {
			a.v4 = append(a.v4, p)
		} else {
			a.v6 = append(a.v6, p)
		}
	}
	s.alloc = a
	return a, rows.Err()
}

// load reads the names and addresses in use, once.
func (a *allocState) load(ctx context.Context, tx *sql.Tx) error {
	if a.loaded {
		return nil
	}
	a.names = map[string]bool{}
	a.pools = map[int64]*poolUse{}
	for _, p := range append(append([]Pool(nil), a.v4...), a.v6...) {
		a.pools[p.ID] = &poolUse{used: map[netip.Addr]bool{}, hint: p.CIDR.Masked().Addr()}
	}
	rows, err := tx.QueryContext(ctx, `SELECT name, ipv4, ipv4_pool, ipv6, ipv6_pool FROM relays`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name, v4 string
		var p4 int64
		var v6 sql.NullString
		var p6 sql.NullInt64
		if err := rows.Scan(&name, &v4, &p4, &v6, &p6); err != nil {
			return err
		}
		a.names[name] = true
		a.use(p4, v4)
		if v6.Valid {
			a.use(p6.Int64, v6.String)
		}
	}
	a.loaded = true
	return rows.Err()
}

func (a *allocState) use(pool int64, addr string) {
	if pu, ok := a.pools[pool]; ok {
		if ad, err := netip.ParseAddr(addr); err == nil {
			pu.used[ad] = true
		}
	}
}

func (a *allocState) name() string {
	for ; ; a.hint++ {
		if n := alloc.Name(a.hint); !a.names[n] {
			a.names[n] = true
			a.hint++
			return n
		}
	}
}

func (a *allocState) freeName(n string) {
	delete(a.names, n)
	if i, ok := alloc.NameIndex(n); ok && i < a.hint {
		a.hint = i
	}
}

func (a *allocState) freeAddr(pool int64, addr string) {
	pu, ok := a.pools[pool]
	if !ok {
		return
	}
	if ad, err := netip.ParseAddr(addr); err == nil {
		delete(pu.used, ad)
		if ad.Less(pu.hint) {
			pu.hint = ad
		}
	}
}

// addr takes the lowest free address of the first pool (by id) that has one.
func (a *allocState) addr(pools []Pool, family string) (netip.Addr, int64, error) {
	if len(pools) == 0 {
		return netip.Addr{}, 0, exhausted(fmt.Sprintf("no %s pool (add one with `configsrv pool add CIDR --gateway IP`)", family))
	}
	for _, p := range pools {
		pu := a.pools[p.ID]
		if ad, ok := alloc.FreeAddrFrom(p.CIDR, p.Gateway, pu.used, pu.hint); ok {
			pu.used[ad] = true
			pu.hint = ad.Next()
			return ad, p.ID, nil
		}
		// Full: the hint stays, as nothing from it on is free either.
	}
	return netip.Addr{}, 0, exhausted("every " + family + " pool is full")
}

// exhausted says which pools ran out; it matches ErrExhausted.
type exhausted string

func (e exhausted) Error() string        { return string(e) }
func (e exhausted) Is(target error) bool { return target == ErrExhausted }
