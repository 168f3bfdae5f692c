/**
 * The agent's structured log: one JSON object per line on stdout (pino), so a
 * DaemonSet's log pipeline can index it. Every module gets a child logger
 * tagged with its component name.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** `dest`: where the lines go (default stdout; tests collect them). */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}, dest?: { write(line: string): void }): Logger {
  const opts = {
    level,
    base: { app: 'i6pn-agent', ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return dest ? pino(opts, dest) : pino(opts);
}

/** `err` as pino's error serializer expects it, for values that may not be Errors. */
export function errInfo(err: unknown): { err: Error } {
  return { err: err instanceof Error ? err : new Error(String(err)) };
}
