// Package cmalloc tunes the C allocator the server's SQLite connections
// allocate from. glibc gives a thread that finds the others' arenas busy
// one of its own, up to eight per core; Go runs cgo calls on whatever
// threads it has, so a burst of queries spreads SQLite's allocations
// over many arenas, each keeping its free memory. Two arenas are enough
// for a handful of connections on a few cores (bench/REPORT.md,
// "Long-polled config": ~5 MiB less with 10,000 held long polls).
package cmalloc

// LimitArenas caps the malloc arenas at n (glibc's M_ARENA_MAX; the
// MALLOC_ARENA_MAX environment variable overrides it). Arenas created
// before the call stay. It reports whether the C library took it: false
// for other C libraries and without cgo.
func LimitArenas(n int) bool { return limitArenas(n) }

// Trim returns the C heap's free memory to the OS (glibc's
// malloc_trim(0), every arena): what SQLite freed under its soft heap
// limit otherwise stays resident. A no-op elsewhere.
func Trim() { trim() }
