/** Reading the audit file a test's proxy writes. */
import { readFile } from 'node:fs/promises';

/** The file's whole records, oldest first; a last line still being written (no newline yet) is not one. */
export async function readAuditFile<T = Record<string, unknown>>(file: string): Promise<T[]> {
  const text = await readFile(file, 'utf8');
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as T);
}
