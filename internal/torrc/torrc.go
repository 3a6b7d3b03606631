// Package torrc models tor's configuration file as both patela sides use it:
// the config server stores and cascades it (global → node → relay), the
// agent renders it for tor.
//
// Parsing follows tor's own reader (config_get_lines in tor's confline.c):
// '#' starts a comment outside a quoted value, a line ending in '\' continues
// on the next, a value may be a C-style quoted string. Option names are
// checked against the option list of the tor this package was generated
// from and written in tor's spelling; values are kept as written.
package torrc

//go:generate go run ./internal/gen -o options_gen.go

import (
	"fmt"
)

// Op is what a line does to the option's values from lower levels.
type Op int

const (
	// OpSet ("Option value"): the first plain line of an option in a level
	// replaces the option's lines from lower levels; later ones add to it.
	OpSet Op = iota
	// OpAppend ("+Option value"): adds to the lines from lower levels.
	OpAppend
	// OpRemove ("/Option"): removes the option's lines from lower levels.
	OpRemove
)

func (o Op) String() string {
	switch o {
	case OpSet:
		return "set"
	case OpAppend:
		return "append"
	case OpRemove:
		return "remove"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// prefix is how the op is written in front of the option name.
func (o Op) prefix() string {
	switch o {
	case OpAppend:
		return "+"
	case OpRemove:
		return "/"
	}
	return ""
}

// Line is one option line.
type Line struct {
	Op    Op
	Key   string // tor's canonical spelling
	Value string // as written: a quoted value keeps its quotes; "" for OpRemove
	Line  int    // 1-based line in the source where the option name starts
	Level string // name of the level it came from (set by Merge)
}

// Config is a torrc: its option lines in order. Comments and blank lines are
// not kept.
type Config struct {
	Lines []Line
}

// ParseError is a torrc that cannot be used, with the line at fault.
type ParseError struct {
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Level is one level of the cascade.
type Level struct {
	Name   string
	Config *Config
}
