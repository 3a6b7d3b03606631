//go:build cgo && linux

package cmalloc

/*
#include <malloc.h>
#include <stdlib.h>

static int have_arena_max(void) {
#ifdef M_ARENA_MAX
	return 1;
#else
	return 0;
#endif
}

static void trim(void) {
#ifdef M_ARENA_MAX
	malloc_trim(0);
#endif
}

static int limit_arenas(int n) {
#ifdef M_ARENA_MAX
	if (getenv("MALLOC_ARENA_MAX") != NULL) {
		return 0;
	}
	return mallopt(M_ARENA_MAX, n) == 1;
#else
	return 0;
#endif
}
*/
import "C"

func limitArenas(n int) bool { return C.limit_arenas(C.int(n)) == 1 }

func trim() { C.trim() }

func supported() bool { return C.have_arena_max() == 1 }
