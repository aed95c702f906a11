// Line-oriented structured logging to stderr: `time level component message {fields}`. One line per
// event, so that logs of several daemons interleave readably under `shoal start` and grep well.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

function configuredLevel(): LogLevel {
  const value = process.env['SHOAL_LOG_LEVEL'];
  return value === 'debug' || value === 'warn' || value === 'error' ? value : 'info';
}

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export function createLogger(component: string): Logger {
  const minimumRank = LEVEL_RANK[configuredLevel()];
  const write = (level: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    if (LEVEL_RANK[level] < minimumRank) return;
    const suffix = fields === undefined ? '' : ` ${safeJson(fields)}`;
    process.stderr.write(`${new Date().toISOString()} ${level} ${component} ${message}${suffix}\n`);
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
  };
}

function safeJson(fields: Record<string, unknown>): string {
  try {
    return JSON.stringify(fields, (_key, value: unknown) => {
      if (value instanceof Error) return { message: value.message, code: (value as { code?: unknown }).code };
      if (typeof value === 'bigint') return value.toString();
      return value;
    });
  } catch {
    return '{"fields":"unserializable"}';
  }
}
