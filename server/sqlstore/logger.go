package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"gorm.io/gorm"
	gormlogger "gorm.io/gorm/logger"
)

// gormLogger routes gorm's logging to slog.
//
// gorm v1.31 ships logger.NewSlogLogger, but it logs every failed query at
// error level. Query errors are returned to the caller, which logs them
// once where it handles them; logging them here too would double every
// error and turn expected ones (a duplicate report id that makes a retry
// idempotent) into alarms. So failed queries go to Debug, slow ones to
// Warn, and gorm.ErrRecordNotFound, a normal answer, is not logged at all.
//
// SQL parameters are never logged: they carry device ids and tokens.
type gormLogger struct {
	log   *slog.Logger
	slow  time.Duration
	level gormlogger.LogLevel
}

var (
	_ gormlogger.Interface = (*gormLogger)(nil)
	_ gorm.ParamsFilter    = (*gormLogger)(nil)
)

// gorm's (*DB).Scan does not ask the session logger which parameters to
// show: it renders the SQL through a package-level recorder whose filter
// defaults to interpolating every parameter, then hands that text to
// Trace. Resetting gorm's hook here, once, before any query can run, is
// the only way to keep parameters out of Scan's log records. It changes
// nothing else: the recorder is used only to produce that log text.
func init() {
	gormlogger.RecorderParamsFilter = func(ctx context.Context, sql string, params ...any) (string, []any) {
		return sql, nil
	}
}

func newGormLogger(log *slog.Logger) *gormLogger {
	return &gormLogger{log: log.With(slog.String("component", "sql")), slow: slowQueryThreshold, level: gormlogger.Warn}
}

// LogMode implements gormlogger.Interface; gorm calls it for db.Debug().
func (l *gormLogger) LogMode(level gormlogger.LogLevel) gormlogger.Interface {
	c := *l
	c.level = level
	return &c
}

// Info implements gormlogger.Interface. gorm's messages are printf
// formats, and rare (the schema migrator, which this package does not use).
func (l *gormLogger) Info(ctx context.Context, msg string, args ...any) {
	if l.level >= gormlogger.Info {
		l.log.InfoContext(ctx, fmt.Sprintf(msg, args...))
	}
}

// Warn implements gormlogger.Interface.
func (l *gormLogger) Warn(ctx context.Context, msg string, args ...any) {
	if l.level >= gormlogger.Warn {
		l.log.WarnContext(ctx, fmt.Sprintf(msg, args...))
	}
}

// Error implements gormlogger.Interface.
func (l *gormLogger) Error(ctx context.Context, msg string, args ...any) {
	if l.level >= gormlogger.Error {
		l.log.ErrorContext(ctx, fmt.Sprintf(msg, args...))
	}
}

// Trace implements gormlogger.Interface; gorm calls it after every query.
// fc renders the SQL, so it is only called when a record will be written.
func (l *gormLogger) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	if l.level <= gormlogger.Silent {
		return
	}
	elapsed := time.Since(begin)
	var (
		level slog.Level
		msg   string
	)
	switch {
	case err != nil && errors.Is(err, gormlogger.ErrRecordNotFound):
		return
	case err != nil:
		level, msg = slog.LevelDebug, "sql query failed"
	case elapsed > l.slow:
		level, msg = slog.LevelWarn, "slow sql query"
	case l.level >= gormlogger.Info:
		level, msg = slog.LevelDebug, "sql query"
	default:
		return
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	sql, rows := fc()
	attrs := []slog.Attr{
		slog.Duration("duration", elapsed),
		slog.String("sql", sql),
	}
	if rows >= 0 {
		attrs = append(attrs, slog.Int64("rows", rows))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	l.log.LogAttrs(ctx, level, msg, attrs...)
}

// ParamsFilter implements gorm.ParamsFilter: gorm asks it which
// parameters to interpolate into the SQL it hands to Trace. None, so
// the logged SQL keeps its placeholders.
func (l *gormLogger) ParamsFilter(ctx context.Context, sql string, params ...any) (string, []any) {
	return sql, nil
}
