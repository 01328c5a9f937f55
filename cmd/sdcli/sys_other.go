//go:build !linux && !darwin

package main

// isTerminalFd is false where terminals are not detected: progress is printed as
// plain lines.
func isTerminalFd(fd uintptr) bool { return false }

// peakRSS is not measured on this system.
func peakRSS() (uint64, bool) { return 0, false }
