// Command journey-ferretdb runs FerretDB (MongoDB wire protocol, SQLite storage) for the local
// stack. It embeds FerretDB's public `ferretdb` package: `go install` of FerretDB's own command
// from the module proxy panics at start because the module zip lacks build/version/version.txt.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite data folder as a file: URL ending in /")
	level := flag.String("log-level", "warn", "debug, info, warn or error")
	// Bulk inserts allocate a lot of short-lived garbage; the Go default (100) spent ~20% of
	// the CPU in the collector. Memory is not what is scarce on a laptop; cores are.
	gcPercent := flag.Int("gc-percent", 400, "Go GC target percentage (GOGC)")
	flag.Parse()
	debug.SetGCPercent(*gcPercent)

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		log.Fatalf("bad -log-level %q: %v", *level, err)
	}
	logger := slog.New(lazyHandler{inner: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})})

	server, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: *sqliteURL,
	})
	if err != nil {
		log.Fatalf("ferretdb: %v", err)
	}

	dir, err := sqliteDir(*sqliteURL)
	if err != nil {
		log.Fatalf("bad -sqlite-url %q: %v", *sqliteURL, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go runIDIndexer(ctx, dir, logger)
	logger.Info("listening", "uri", server.MongoDBURI())
	if err := server.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatalf("ferretdb: %v", err)
	}
}
