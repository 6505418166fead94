import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
// Where the tests leave what a person may want to look at: node logs
// (js-logs/) and the browser test's screenshots (browser/).
export const artifacts = process.env.HUB_TEST_ARTIFACTS || path.join(repoRoot, 'artifacts');
