// Text layout for human output: aligned tables and "key: value" blocks. Colour is applied after
// padding, from the plain text's width, so escape codes never shift a column; with colour off
// (stdout not a terminal, NO_COLOR) the painter is the identity and output is plain text that
// scripts and tests can compare.

export type Style = 'bold' | 'dim' | 'red' | 'green' | 'yellow';

export type Painter = (text: string, style: Style | undefined) => string;

const ANSI_CODES: Record<Style, [open: number, close: number]> = {
  bold: [1, 22],
  dim: [2, 22],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
};

export const plainPainter: Painter = (text) => text;

export const ansiPainter: Painter = (text, style) => {
  if (style === undefined) return text;
  const [open, close] = ANSI_CODES[style];
  return `\u001b[${open}m${text}\u001b[${close}m`;
};

export interface Column<Row> {
  readonly header: string;
  /** Numbers and sizes read best right-aligned, so their units line up. */
  readonly align?: 'left' | 'right';
  readonly value: (row: Row) => string;
  readonly style?: (row: Row) => Style | undefined;
}

const COLUMN_GAP = '  ';

/** One header line and one line per row; the last column is not padded (no trailing blanks). */
export function renderTable<Row>(columns: readonly Column<Row>[], rows: readonly Row[], paint: Painter): string {
  const cells = rows.map((row) => columns.map((column) => column.value(row)));
  const widths = columns.map((column, index) =>
    Math.max(column.header.length, ...cells.map((line) => (line[index] ?? '').length)),
  );
  const layout = (texts: readonly string[], styleOf: (index: number) => Style | undefined): string =>
    texts
      .map((text, index) => {
        const width = widths[index] ?? 0;
        const isLast = index === texts.length - 1;
        const padded = columns[index]?.align === 'right' ? text.padStart(width) : isLast ? text : text.padEnd(width);
        return paint(padded, styleOf(index));
      })
      .join(COLUMN_GAP);
  const lines = [layout(columns.map((column) => column.header), () => 'bold')];
  for (const [rowIndex, row] of rows.entries()) {
    lines.push(layout(cells[rowIndex] ?? [], (index) => columns[index]?.style?.(row)));
  }
  return `${lines.join('\n')}\n`;
}

export interface Field {
  readonly label: string;
  readonly value: string;
  readonly style?: Style | undefined;
}

/** A block of "label  value" lines with the values aligned, for one object (volume info, stat). */
export function renderFields(fields: readonly Field[], paint: Painter): string {
  const width = Math.max(0, ...fields.map((field) => field.label.length)) + 1;
  return fields.map((field) => `${`${field.label}:`.padEnd(width)}  ${paint(field.value, field.style)}\n`).join('');
}
