// Sdcli generates images with Stable Diffusion 1.x and 2.x models from the command line,
// with flags in the style of stable-diffusion.cpp, and measures the runtime.
//
// Progress goes to stderr (one line redrawn on a terminal, plain lines otherwise) and
// the paths of the images written to stdout, one per line. Ctrl-C cancels cleanly:
// nothing is written. Exit codes: 0 success, 1 error, 2 invalid command line or
// request, 130 cancelled.
//
// Flags are given as -name or --name; sdcli help COMMAND and sdcli COMMAND -h print
// them with their defaults.
//
// # sdcli version
//
// Prints the version of sdcli and the runtime library it finds (or why none loads).
//
//	--lib path            the runtime library to report on (default: the usual search)
package main
