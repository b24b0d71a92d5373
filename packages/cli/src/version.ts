import { readFileSync } from 'node:fs';

/** Read at run time: package.json sits outside rootDir, so it cannot be imported. */
export function cliVersion(): string {
  const manifest: unknown = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  if (typeof manifest === 'object' && manifest !== null && 'version' in manifest) {
    if (typeof manifest.version === 'string') return manifest.version;
  }
  return '0.0.0';
}
