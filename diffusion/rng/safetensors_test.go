package rng

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// readF32Safetensors is a minimal test-only safetensors reader (8-byte
// little-endian header length, JSON header, raw data) for the float32 tensors
// of the conformance kit. The project's modelfile package replaces it.
func readF32Safetensors(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(data), 8)
	n := binary.LittleEndian.Uint64(data)
	require.LessOrEqual(t, n, uint64(len(data)-8))
	var header map[string]struct {
		Dtype   string    `json:"dtype"`
		Offsets [2]uint64 `json:"data_offsets"`
	}
	require.NoError(t, json.Unmarshal(data[8:8+n], &header))
	body := data[8+n:]
	tensors := make(map[string][]float32)
	for name, h := range header {
		if name == "__metadata__" || h.Dtype != "F32" {
			continue
		}
		raw := body[h.Offsets[0]:h.Offsets[1]]
		values := make([]float32, len(raw)/4)
		for i := range values {
			values[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		tensors[name] = values
	}
	return tensors
}
