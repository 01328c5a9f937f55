//go:build unix && !linux

package diffusion

func madviseHuge([]byte) error { return nil }
