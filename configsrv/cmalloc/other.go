//go:build !cgo || !linux

package cmalloc

func limitArenas(int) bool { return false }

func supported() bool { return false }

func trim() {}
