//go:build unix && !linux

package modelfile

// preferHugePages does nothing outside Linux (see the Linux version).
func preferHugePages(int, []byte) {}
