// Package token issues and verifies the nodes' bearer tokens: Biscuits
// signed with the server's Ed25519 root key, whose authority block names
// the node (its id, its EK identity and its token epoch) and bounds the
// token's lifetime with a time check. The server compares the three with
// the node's row on every request, so a token dies with any state change
// (the epoch moves) and can never name another machine (ids are never
// reused, and the EK identity must match).
package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/datalog"

	"patela/internal/ekid"
)

// DefaultTTL is how long a token lives unless configured otherwise.
const DefaultTTL = time.Hour

// ErrInvalid is returned for any token that does not verify: forged,
// expired, malformed or attenuated.
var ErrInvalid = errors.New("invalid token")

const pemType = "PATELA BISCUIT ED25519 PRIVATE KEY"

// GenerateKey writes a fresh root key to path (mode 0600). It refuses to
// overwrite an existing file.
func GenerateKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: pemType, Bytes: priv.Seed()}); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// LoadKey reads a root key written by GenerateKey.
func LoadKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemType || len(b.Bytes) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not a biscuit root key (PEM %q)", path, pemType)
	}
	return ed25519.NewKeyFromSeed(b.Bytes), nil
}

// Authority issues and verifies tokens.
type Authority struct {
	key ed25519.PrivateKey
	pub ed25519.PublicKey
	TTL time.Duration

	// Verified tokens, by hash, so repeat requests with the same token skip
	// the signature check and Datalog evaluation. The expiry is cached too
	// and rechecked on every use.
	mu    sync.Mutex
	cache map[[32]byte]cached
}

// Claims is what a token says of its node.
type Claims struct {
	Node  int64   // node id
	EK    ekid.ID // the node's EK identity
	Epoch int64   // the node's token epoch when the token was issued
}

type cached struct {
	claims  Claims
	expires time.Time
}

const maxCache = 1 << 16

// New returns an Authority with root key key and tokens living ttl.
func New(key ed25519.PrivateKey, ttl time.Duration) *Authority {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Authority{key: key, pub: key.Public().(ed25519.PublicKey), TTL: ttl, cache: map[[32]byte]cached{}}
}

// Issue returns a token with claims c valid until now+TTL (whole seconds:
// Biscuit dates have second precision).
func (a *Authority) Issue(c Claims, now time.Time) (string, time.Time, error) {
	exp := now.Add(a.TTL).Truncate(time.Second)
	// Built as terms rather than parsed from Datalog text: the parser
	// dominates the cost of a handshake otherwise; the claims are one
	// fact, as each fact costs. The block reads:
	//   node(<id>, hex:<EK identity>, <epoch>); expires(<exp>);
	//   check if time($t), $t < <exp>;
	b := biscuit.NewBuilder(a.key)
	for _, f := range []biscuit.Fact{
		fact("node", biscuit.Integer(c.Node), biscuit.Bytes(c.EK[:]), biscuit.Integer(c.Epoch)),
		fact("expires", biscuit.Date(exp)),
	} {
		if err := b.AddAuthorityFact(f); err != nil {
			return "", time.Time{}, err
		}
	}
	if err := b.AddAuthorityCheck(biscuit.Check{Queries: []biscuit.Rule{{
		Head: biscuit.Predicate{Name: "query"},
		Body: []biscuit.Predicate{{Name: "time", IDs: []biscuit.Term{biscuit.Variable("t")}}},
		Expressions: []biscuit.Expression{{
			biscuit.Value{Term: biscuit.Variable("t")}, biscuit.Value{Term: biscuit.Date(exp)}, biscuit.BinaryLessThan,
		}},
	}}}); err != nil {
		return "", time.Time{}, err
	}
	tok, err := b.Build()
	if err != nil {
		return "", time.Time{}, err
	}
	raw, err := tok.Serialize()
	if err != nil {
		return "", time.Time{}, err
	}
	return base64.StdEncoding.EncodeToString(raw), exp, nil
}

// Verify checks the token's signature and its checks at time now and
// returns its claims. A token without all three claims (issued by an
// older server) is invalid: its node attests again.
func (a *Authority) Verify(tok string, now time.Time) (Claims, error) {
	h := sha256.Sum256([]byte(tok))
	a.mu.Lock()
	c, ok := a.cache[h]
	a.mu.Unlock()
	if ok {
		if now.Before(c.expires) {
			return c.claims, nil
		}
		return Claims{}, fmt.Errorf("%w: expired", ErrInvalid)
	}
	claims, exp, err := a.verify(tok, now)
	if err != nil {
		return Claims{}, err
	}
	a.mu.Lock()
	if len(a.cache) >= maxCache {
		for k, v := range a.cache {
			if !now.Before(v.expires) || len(a.cache) >= maxCache {
				delete(a.cache, k)
			}
		}
	}
	a.cache[h] = cached{claims: claims, expires: exp}
	a.mu.Unlock()
	return claims, nil
}

func (a *Authority) verify(tok string, now time.Time) (Claims, time.Time, error) {
	var none Claims
	raw, err := base64.StdEncoding.DecodeString(tok)
	if err != nil {
		return none, time.Time{}, fmt.Errorf("%w: not base64", ErrInvalid)
	}
	b, err := biscuit.Unmarshal(raw)
	if err != nil {
		return none, time.Time{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// Our tokens are never attenuated; refusing extra blocks keeps the
	// authorizer's view to what the server signed.
	if b.BlockCount() != 0 {
		return none, time.Time{}, fmt.Errorf("%w: unexpected attenuation blocks", ErrInvalid)
	}
	// Only tokens we signed get this far and their Datalog is a few facts,
	// so a long wall-clock limit costs nothing; the library's 2 ms default
	// spuriously fails under CPU contention.
	az, err := b.Authorizer(a.pub, biscuit.WithWorldOptions(datalog.WithMaxDuration(time.Second)))
	if err != nil {
		return none, time.Time{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// time(<now>); allow if node($n, $e, $p);
	az.AddFact(fact("time", biscuit.Date(now)))
	az.AddPolicy(biscuit.Policy{Kind: biscuit.PolicyKindAllow, Queries: []biscuit.Rule{{
		Head: biscuit.Predicate{Name: "allow"},
		Body: []biscuit.Predicate{{Name: "node", IDs: []biscuit.Term{biscuit.Variable("n"), biscuit.Variable("e"), biscuit.Variable("p")}}},
	}}})
	if err := az.Authorize(); err != nil {
		return none, time.Time{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var c Claims
	claims, err := queryOne(az, "node", 3)
	if err != nil {
		return none, time.Time{}, err
	}
	node, ok1 := claims[0].(biscuit.Integer)
	ek, ok2 := claims[1].(biscuit.Bytes)
	epoch, ok3 := claims[2].(biscuit.Integer)
	if !ok1 || !ok2 || !ok3 || len(ek) != len(c.EK) {
		return none, time.Time{}, fmt.Errorf("%w: the node fact is not (id, %d-byte EK identity, epoch)", ErrInvalid, len(c.EK))
	}
	c.Node, c.EK, c.Epoch = int64(node), ekid.ID(ek), int64(epoch)
	// The expiry check passed; the signed expires fact (same value) bounds
	// how long the cache may vouch for this token.
	xt, err := queryOne(az, "expires", 1)
	if err != nil {
		return none, time.Time{}, err
	}
	exp, ok := xt[0].(biscuit.Date)
	if !ok {
		return none, time.Time{}, fmt.Errorf("%w: expiry is not a date", ErrInvalid)
	}
	return c, time.Time(exp), nil
}

// queryOne returns the terms of the one fact called name with arity
// terms.
func queryOne(az biscuit.Authorizer, name string, arity int) ([]biscuit.Term, error) {
	vars := make([]biscuit.Term, arity)
	for i := range vars {
		vars[i] = biscuit.Variable(fmt.Sprint("x", i))
	}
	facts, err := az.Query(biscuit.Rule{
		Head: biscuit.Predicate{Name: "data", IDs: vars},
		Body: []biscuit.Predicate{{Name: name, IDs: vars}},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(facts) != 1 || len(facts[0].IDs) != arity {
		return nil, fmt.Errorf("%w: want exactly one %s fact of %d terms", ErrInvalid, name, arity)
	}
	return facts[0].IDs, nil
}

func fact(name string, t ...biscuit.Term) biscuit.Fact {
	return biscuit.Fact{Predicate: biscuit.Predicate{Name: name, IDs: t}}
}
