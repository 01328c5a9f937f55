package sderr

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestMark(t *testing.T) {
	base := fmt.Errorf("vocab.json: %w", fs.ErrNotExist)
	bad := Mark(BadModel, base)
	assert.EqualError(t, bad, base.Error(), "the message is unchanged")
	assert.ErrorIs(t, bad, BadModel)
	assert.ErrorIs(t, bad, fs.ErrNotExist, "the cause stays matchable")
	assert.NotErrorIs(t, bad, Unsupported)

	unsupported := Mark(Unsupported, errors.New(`dtype "F8_E4M3"`))
	outer := Mark(BadModel, fmt.Errorf("x.safetensors: %w", unsupported))
	assert.ErrorIs(t, outer, Unsupported, "the inner kind wins")
	assert.NotErrorIs(t, outer, BadModel)

	assert.NoError(t, Mark(BadModel, nil))
}
