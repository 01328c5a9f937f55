package server

import (
	_ "embed"
	"net/http"
)

// page is the web UI: one self-contained HTML file (no build step, no external assets)
// over /v1/jobs and /sdapi/v1.
//
//go:embed web/index.html
var page []byte

func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
	_, _ = w.Write(page)
}
