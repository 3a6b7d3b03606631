package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
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
	rows, err := q.QueryContext(ctx, `SELECT p.id, p.cidr, p.gateway,
		(SELECT count(*) FROM relays WHERE ipv4_pool = p.id) + (SELECT count(*) FROM relays WHERE ipv6_pool = p.id)
		FROM pools p ORDER BY p.id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pool
	for rows.Next() {
		var p Pool
		var c, g string
		if err := rows.Scan(&p.ID, &c, &g, &p.Used); err != nil {
			return nil, err
		}
		if p.CIDR, err = netip.ParsePrefix(c); err != nil {
			return nil, fmt.Errorf("pool %d: %w", p.ID, err)
		}
		if p.Gateway, err = netip.ParseAddr(g); err != nil {
			return nil, fmt.Errorf("pool %d: %w", p.ID, err)
		}
		p.Size = alloc.Size(p.CIDR, 1<<63)
		out = append(out, p)
	}
	return out, rows.Err()
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
	// Gateways of the relay's pools.
	IPv4Gateway netip.Addr `json:"-"`
	IPv6Gateway netip.Addr `json:"-"`
}

// Relays lists the relays of node nodeID (all relays when 0), by node and uid.
func (s *Store) Relays(ctx context.Context, nodeID int64) ([]Relay, error) {
	q := `SELECT r.id, r.node_id, r.idx, r.name, r.ipv4, p4.cidr, p4.gateway, r.ipv6, p6.cidr, p6.gateway,
		r.or_port, r.torrc, r.fingerprint, r.ed25519_id, r.run_state, r.restarts, r.reported_at
		FROM relays r JOIN pools p4 ON p4.id = r.ipv4_pool LEFT JOIN pools p6 ON p6.id = r.ipv6_pool`
	var args []any
	if nodeID != 0 {
		q += ` WHERE r.node_id = ?`
		args = append(args, nodeID)
	}
	rows, err := s.QueryContext(ctx, q+` ORDER BY r.node_id, r.idx`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Relay
	for rows.Next() {
		r, err := scanRelay(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *r)
	}
	return out, rows.Err()
}

// RelayByName returns the relay called name.
func (s *Store) RelayByName(ctx context.Context, name string) (*Relay, error) {
	r, err := scanRelay(s.queryRow(ctx, `SELECT r.id, r.node_id, r.idx, r.name, r.ipv4, p4.cidr, p4.gateway, r.ipv6, p6.cidr, p6.gateway,
		r.or_port, r.torrc, r.fingerprint, r.ed25519_id, r.run_state, r.restarts, r.reported_at
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
	err := sc.Scan(&r.ID, &r.NodeID, &idx, &r.Name, &v4, &p4, &g4, &v6, &p6, &g6,
		&r.ORPort, &r.Torrc, &r.Fingerprint, &r.Ed25519ID, &r.State, &r.Restarts, &rep)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	r.UID = alloc.FirstUID + idx
	r.ReportedAt = fromUnix(rep)
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

// Allocate records the node's specs and, in the same transaction, adds or
// removes relays so the node has the count the allocation rules give. On
// exhaustion nothing changes and the error wraps ErrExhausted. It returns
// the relay counts before and after.
func (s *Store) Allocate(ctx context.Context, nodeID int64, sp *api.Specs, now time.Time) (before, after int, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if err := nodeExists(tx, nodeID); err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT count(*) FROM relays WHERE node_id = ?`, nodeID).Scan(&before); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE nodes SET cpus = ?, memory_bytes = ?, cpu_model = ?, last_seen = ? WHERE id = ?`,
			sp.CPUs, int64(min(sp.MemoryBytes, 1<<63-1)), sp.CPUModel, unix(now), nodeID); err != nil {
			return err
		}
		g, n, err := settingsQ(ctx, tx, nodeID)
		if err != nil {
			return err
		}
		eff := settings.Resolve(g, n)
		after = alloc.RelayCount(sp.CPUs, sp.MemoryBytes, eff.RelayMemoryMB, eff.MaxRelays)
		return resize(ctx, tx, nodeID, after, now)
	})
	if err != nil {
		return 0, 0, err
	}
	return before, after, nil
}

type relayRow struct {
	id   int64
	idx  int
	ipv6 bool
}

// resize makes node nodeID own exactly want relays: it drops those of
// highest index, gives missing IPv6 addresses when a v6 pool exists, and
// adds relays with the lowest free index, name and addresses.
func resize(ctx context.Context, tx *sql.Tx, nodeID int64, want int, now time.Time) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, idx, ipv6 IS NOT NULL FROM relays WHERE node_id = ? ORDER BY idx`, nodeID)
	if err != nil {
		return err
	}
	var have []relayRow
	for rows.Next() {
		var r relayRow
		if err := rows.Scan(&r.id, &r.idx, &r.ipv6); err != nil {
			rows.Close()
			return err
		}
		have = append(have, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for len(have) > want {
		last := have[len(have)-1]
		if _, err := tx.Exec(`DELETE FROM relays WHERE id = ?`, last.id); err != nil {
			return err
		}
		have = have[:len(have)-1]
	}
	pools, err := poolsQ(ctx, tx)
	if err != nil {
		return err
	}
	var v4, v6 []Pool
	for _, p := range pools {
		if p.Family() == 4 {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	a := &allocator{tx: tx, ctx: ctx}
	if len(v6) > 0 {
		for _, r := range have {
			if r.ipv6 {
				continue
			}
			addr, pid, err := a.addr(v6)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE relays SET ipv6 = ?, ipv6_pool = ? WHERE id = ?`, addr.String(), pid, r.id); err != nil {
				return err
			}
		}
	}
	if len(have) == want {
		return nil
	}
	usedIdx := map[int]bool{}
	for _, r := range have {
		usedIdx[r.idx] = true
	}
	names, err := a.names()
	if err != nil {
		return err
	}
	for i := len(have); i < want; i++ {
		idx := alloc.FreeIndex(usedIdx)
		usedIdx[idx] = true
		name := alloc.FreeName(names)
		names[name] = true
		addr4, pid4, err := a.addr(v4)
		if err != nil {
			return err
		}
		var addr6 sql.NullString
		var pid6 sql.NullInt64
		if len(v6) > 0 {
			a6, p6, err := a.addr(v6)
			if err != nil {
				return err
			}
			addr6 = sql.NullString{String: a6.String(), Valid: true}
			pid6 = sql.NullInt64{Int64: p6, Valid: true}
		}
		if _, err := tx.Exec(`INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, created)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			nodeID, idx, name, addr4.String(), pid4, addr6, pid6, alloc.ORPort, unix(now)); err != nil {
			return err
		}
	}
	return nil
}

// allocator caches, for one transaction, the names and addresses in use.
type allocator struct {
	ctx  context.Context
	tx   *sql.Tx
	used map[int64]map[netip.Addr]bool // per pool
}

func (a *allocator) names() (map[string]bool, error) {
	rows, err := a.tx.QueryContext(a.ctx, `SELECT name FROM relays`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		m[n] = true
	}
	return m, rows.Err()
}

// addr takes the lowest free address of the first pool (by id) that has one.
func (a *allocator) addr(pools []Pool) (netip.Addr, int64, error) {
	if len(pools) == 0 {
		return netip.Addr{}, 0, fmt.Errorf("no IPv4 pool: %w (add one with `configsrv pool add CIDR --gateway IP`)", ErrExhausted)
	}
	if a.used == nil {
		a.used = map[int64]map[netip.Addr]bool{}
	}
	for _, p := range pools {
		used, ok := a.used[p.ID]
		if !ok {
			used = map[netip.Addr]bool{}
			col := "ipv4"
			if p.Family() == 6 {
				col = "ipv6"
			}
			rows, err := a.tx.QueryContext(a.ctx, `SELECT `+col+` FROM relays WHERE `+col+`_pool = ?`, p.ID)
			if err != nil {
				return netip.Addr{}, 0, err
			}
			for rows.Next() {
				var s string
				if err := rows.Scan(&s); err != nil {
					rows.Close()
					return netip.Addr{}, 0, err
				}
				if ad, err := netip.ParseAddr(s); err == nil {
					used[ad] = true
				}
			}
			rows.Close()
			a.used[p.ID] = used
		}
		if ad, ok := alloc.FreeAddr(p.CIDR, p.Gateway, used); ok {
			used[ad] = true
			return ad, p.ID, nil
		}
	}
	fam := "IPv4"
	if pools[0].Family() == 6 {
		fam = "IPv6"
	}
	return netip.Addr{}, 0, fmt.Errorf("every %s pool is full: %w", fam, ErrExhausted)
}
