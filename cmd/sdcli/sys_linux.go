package main

import "golang.org/x/sys/unix"

// isTerminalFd reports whether fd is a terminal (it has terminal attributes).
func isTerminalFd(fd uintptr) bool {
	_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	return err == nil
}

// peakRSS is the process's peak resident set size in bytes (Linux reports ru_maxrss in
// KiB).
func peakRSS() (uint64, bool) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return uint64(ru.Maxrss) * 1024, true
}
