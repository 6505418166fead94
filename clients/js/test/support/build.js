// Builds the node binary the tests run (bin/node), as make build does,
// unless HUBCLUSTER_NODE_BIN names one already built (make test does).
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './paths.js';

if (!process.env.HUBCLUSTER_NODE_BIN) {
  execFileSync('go', ['build', '-trimpath', '-o', path.join(repoRoot, 'bin', 'node'), './cmd/node'], {
    cwd: repoRoot,
    stdio: 'inherit',
    env: { ...process.env, CGO_ENABLED: '0' },
  });
}
