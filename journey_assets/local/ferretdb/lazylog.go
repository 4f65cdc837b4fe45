package main

import (
	"context"
	"log/slog"
)

// lazyHandler defers formatting of attributes added with Logger.With until a record is
// actually logged. FerretDB's SQL layer calls Logger.With(args...) with every statement's
// arguments (whole documents) before each Debug call; slog's text handler formats them at
// With time, whatever the level, which cost a quarter of FerretDB's CPU on bulk inserts.
type lazyHandler struct {
	inner slog.Handler
	attrs []slog.Attr
}

func (h lazyHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h lazyHandler) Handle(ctx context.Context, r slog.Record) error {
	inner := h.inner
	if len(h.attrs) > 0 {
		inner = inner.WithAttrs(h.attrs)
	}
	return inner.Handle(ctx, r)
}

func (h lazyHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	joined := make([]slog.Attr, 0, len(h.attrs)+len(attrs))
	joined = append(append(joined, h.attrs...), attrs...)
	return lazyHandler{inner: h.inner, attrs: joined}
}

func (h lazyHandler) WithGroup(name string) slog.Handler {
	inner := h.inner
	if len(h.attrs) > 0 {
		inner = inner.WithAttrs(h.attrs)
	}
	return lazyHandler{inner: inner.WithGroup(name)}
}
