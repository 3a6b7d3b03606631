package vault

import (
	"context"

	"patela/internal/api"
)

// Tokens supplies bearer tokens (an *attest.Session).
type Tokens interface {
	Token(ctx context.Context) (string, error)
}

// ServerMirror is the config server's key mirror, reached with the node's
// token.
type ServerMirror struct {
	Client *api.Client
	Tokens Tokens
}

// Get implements Mirror.
func (m ServerMirror) Get(ctx context.Context) (*api.KeyBundle, error) {
	tok, err := m.Tokens.Token(ctx)
	if err != nil {
		return nil, err
	}
	return m.Client.GetKeys(ctx, tok)
}

// Put implements Mirror.
func (m ServerMirror) Put(ctx context.Context, b *api.KeyBundle) error {
	tok, err := m.Tokens.Token(ctx)
	if err != nil {
		return err
	}
	return m.Client.PutKeys(ctx, tok, b)
}
