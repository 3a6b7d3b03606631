package cmalloc

import (
	"os"
	"testing"

	"patela/internal/testutil"
)

// Where the C library has the setting (glibc, which the server is built
// with), the limit is taken, unless the environment sets one: the
// operator's choice stands.
func TestLimitArenas(t *testing.T) {
	if !supported() {
		testutil.SkipOrFail(t, "this C library has no M_ARENA_MAX (not glibc, or no cgo)")
	}
	if os.Getenv("MALLOC_ARENA_MAX") != "" {
		if LimitArenas(2) {
			t.Fatal("MALLOC_ARENA_MAX is set, yet the limit was applied over it")
		}
		return
	}
	if !LimitArenas(2) {
		t.Fatal("glibc refused M_ARENA_MAX 2")
	}
}
