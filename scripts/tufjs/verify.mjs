// verify.mjs fetches one target from the OTA server's TUF repository with
// tuf-js, a TUF client written independently of go-tuf, so that the
// repository is checked by more than the library that builds it.
//
//   node verify.mjs --metadata-url URL --targets-url URL --root FILE \
//                   --target PATH --out FILE --cache DIR
//
// --root is the trusted root that bootstraps an empty --cache; a cache that
// already holds a root.json (and a timestamp, snapshot, targets from an
// earlier run) keeps trusting what it holds, as a handset does between polls.
//
// On success it prints one JSON line on stdout:
//   {"ok":true,"target":...,"length":...,"sha256":...,"root_version":...}
// and exits 0. On any failure it prints {"ok":false,"stage":...,"error":...}
// on stdout, a one-line message on stderr, and exits 1 (2 for bad usage).
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { Updater } from 'tuf-js';

const required = ['metadata-url', 'targets-url', 'root', 'target', 'out', 'cache'];

function fail(code, stage, err) {
  // tuf-js errors keep the name "Error"; their class says what failed.
  const name = err instanceof Error ? (err.name !== 'Error' ? err.name : err.constructor.name) : '';
  const message = err instanceof Error ? `${name}: ${err.message}` : String(err);
  process.stdout.write(JSON.stringify({ ok: false, stage, error: message }) + '\n');
  process.stderr.write(`tufjs-verify: ${stage}: ${message}\n`);
  process.exit(code);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: Object.fromEntries(required.map((name) => [name, { type: 'string' }])),
    strict: true,
  }));
} catch (err) {
  fail(2, 'usage', err);
}
for (const name of required) {
  if (!args[name]) {
    fail(2, 'usage', new Error(`--${name} is required (need ${required.map((n) => '--' + n).join(' ')})`));
  }
}

// tuf-js joins file names onto the base URLs: make sure each ends in "/".
const slash = (u) => (u.endsWith('/') ? u : u + '/');

let stage = 'setup';
try {
  mkdirSync(args.cache, { recursive: true });
  const trusted = join(args.cache, 'root.json');
  if (!existsSync(trusted)) {
    copyFileSync(args.root, trusted);
  }
  stage = `trusted-root ${trusted}`;
  const updater = new Updater({
    metadataDir: args.cache,
    metadataBaseUrl: slash(args['metadata-url']),
    targetBaseUrl: slash(args['targets-url']),
    // Fail fast: the tests serve from loopback, and a refusal must not
    // hide behind retries.
    config: { fetchTimeout: 30000, fetchRetry: false },
  });

  stage = 'refresh';
  await updater.refresh();

  stage = 'target-info';
  const info = await updater.getTargetInfo(args.target);
  if (!info) {
    throw new Error(`target ${JSON.stringify(args.target)} is not in the trusted targets metadata`);
  }

  stage = 'download';
  // downloadTarget verifies length and hashes against the signed metadata
  // before it copies the file to --out.
  await updater.downloadTarget(info, args.out);

  stage = 'check-output';
  const data = readFileSync(args.out);
  const sha256 = createHash('sha256').update(data).digest('hex');
  if (data.length !== info.length || (info.hashes.sha256 && info.hashes.sha256 !== sha256)) {
    throw new Error(`${args.out} does not match the signed length and sha256`);
  }
  const root = JSON.parse(readFileSync(trusted, 'utf8'));
  process.stdout.write(
    JSON.stringify({
      ok: true,
      target: args.target,
      length: data.length,
      sha256,
      root_version: root.signed.version,
    }) + '\n',
  );
} catch (err) {
  fail(1, stage, err);
}
