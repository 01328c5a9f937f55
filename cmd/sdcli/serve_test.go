package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestServeUsage(t *testing.T) {
	for _, c := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"serve", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"serve", "--workers", "0"}, exitUsage, "-workers"},
		{[]string{"serve", "--max-size", "100"}, exitUsage, "multiple of 8"},
		{[]string{"serve", "--grace", "soon"}, exitUsage, "positive duration"},
		{[]string{"serve"}, exitUsage, "demo model"}, // testApp finds no demo model
	} {
		r := runArgs(t, c.args...)
		assert.Equal(t, c.code, r.code, "%v: %s", c.args, r.stderr)
		assert.Contains(t, r.stderr, c.stderr, "%v", c.args)
	}
	r := runArgs(t, "help", "serve")
	assert.Equal(t, exitOK, r.code)
	for _, flag := range []string{"--addr host:port", "--workers N", "--queue N", "--max-size px", "--max-steps N",
		"--api-key KEY", "--cors ORIGIN", "--grace duration", "--device NAME", "--lib path"} {
		assert.Contains(t, r.stdout, flag)
	}
}
