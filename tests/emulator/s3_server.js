#!/usr/bin/env node
/*
 * s3_server - the local stack's S3-compatible CDN: s3rver (from the npm
 * registry) with the checks that s3rver itself leaves out, so that the
 * daemon's signing is really exercised:
 *   - every request must carry an AWS Signature V4 Authorization header;
 *     unsigned requests, other signature versions and presigned URLs get
 *     403 AccessDenied;
 *   - the signature is verified (s3rver accepts any V4 signature as is);
 *   - the downloader key may only read (GET, HEAD); the uploader key may
 *     also write.
 * As with S3 itself, the x-amz-content-sha256 header is required (curl
 * before 8.x does not add it: pass -H "x-amz-content-sha256: UNSIGNED-PAYLOAD"
 * and curl signs it); the body is not checked against a hex hash there.
 *
 *   s3_server.js --directory DIR --address 127.0.0.1 --port N
 *                [--key PEM --cert PEM] --keys FILE --bucket NAME...
 * FILE: {"downloader": [access, secret], "uploader": [access, secret]}
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account');
const S3Error = require('s3rver/lib/models/error');

const MAX_SKEW_MS = 15 * 60 * 1000;
const AUTH_RE = new RegExp(
  '^AWS4-HMAC-SHA256\\s+Credential=([^/,\\s]+)/(\\d{8})/([^/]+)/([^/]+)/aws4_request,' +
    '\\s*SignedHeaders=([^,\\s]+),\\s*Signature=([0-9a-f]{64})\\s*$',
);

function parseArgs(argv) {
  const opts = { buckets: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`option ${k} needs a value`);
    if (k === '--bucket') opts.buckets.push(v);
    else opts[k.replace(/^--/, '')] = v;
  }
  for (const k of ['directory', 'port', 'keys']) {
    if (!opts[k]) throw new Error(`--${k} is required`);
  }
  return opts;
}

const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();
const sha256hex = data => crypto.createHash('sha256').update(data).digest('hex');

/* RFC 3986 encoding of one query component, as SigV4 canonicalises it. */
function uriEncode(s) {
  return encodeURIComponent(s).replace(
    /[!'()*]/g,
    c => '%' + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

function canonicalQueries(rawQuery) {
  if (!rawQuery) return [''];
  const pairs = rawQuery
    .split('&')
    .filter(p => p.length > 0)
    .map(p => {
      const i = p.indexOf('=');
      const k = i < 0 ? p : p.slice(0, i);
      const v = i < 0 ? '' : p.slice(i + 1);
      const dec = x => decodeURIComponent(x.replace(/\+/g, ' '));
      return [uriEncode(dec(k)), uriEncode(dec(v))];
    })
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1));
  const sorted = pairs.map(([k, v]) => `${k}=${v}`).join('&');
  /* Older clients sign the query as sent; accept that form as well. */
  return sorted === rawQuery ? [sorted] : [sorted, rawQuery];
}

function denied(message) {
  return new S3Error('AccessDenied', message);
}

function verifier(keys) {
  const secrets = new Map();
  const writers = new Set();
  secrets.set(keys.downloader[0], keys.downloader[1]);
  secrets.set(keys.uploader[0], keys.uploader[1]);
  writers.add(keys.uploader[0]);

  return async function sigv4(ctx, next) {
    const auth = ctx.get('authorization');
    if (!auth) throw denied('Anonymous access is not allowed');
    const m = AUTH_RE.exec(auth);
    if (!m) throw denied('Only AWS Signature Version 4 header authentication is accepted');
    const [, accessKey, date, region, service, signedHeaders, signature] = m;
    const secret = secrets.get(accessKey);
    if (secret === undefined) {
      throw new S3Error(
        'InvalidAccessKeyId',
        'The AWS Access Key Id you provided does not exist in our records.',
        { AWSAccessKeyId: accessKey },
      );
    }
    const amzDate = ctx.get('x-amz-date');
    const dm = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
    if (!dm || amzDate.slice(0, 8) !== date) throw denied('Missing or invalid x-amz-date');
    const t = Date.UTC(dm[1], dm[2] - 1, dm[3], dm[4], dm[5], dm[6]);
    if (Math.abs(Date.now() - t) > MAX_SKEW_MS) {
      throw new S3Error(
        'RequestTimeTooSkewed',
        'The difference between the request time and the current time is too large.',
      );
    }

    const raw = ctx.req.url;
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const query = q < 0 ? '' : raw.slice(q + 1);
    const names = signedHeaders.split(';');
    if (!names.includes('host')) throw denied('The host header must be signed');
    const headers = names
      .map(h => {
        const v = ctx.req.headers[h];
        const value = Array.isArray(v) ? v.join(',') : v === undefined ? '' : v;
        return `${h}:${String(value).trim().replace(/\s+/g, ' ')}\n`;
      })
      .join('');
    const payload = ctx.get('x-amz-content-sha256');
    if (!payload || !names.includes('x-amz-content-sha256')) {
      throw new S3Error(
        'InvalidRequest',
        'Missing required header for this request: x-amz-content-sha256',
      );
    }
    const scope = `${date}/${region}/${service}/aws4_request`;
    let signingKey = hmac('AWS4' + secret, date);
    signingKey = hmac(signingKey, region);
    signingKey = hmac(signingKey, service);
    signingKey = hmac(signingKey, 'aws4_request');

    const ok = canonicalQueries(query).some(cq => {
      const creq = [ctx.method, path, cq, headers, signedHeaders, payload].join('\n');
      const sts = ['AWS4-HMAC-SHA256', amzDate, scope, sha256hex(creq)].join('\n');
      const want = hmac(signingKey, sts);
      return crypto.timingSafeEqual(want, Buffer.from(signature, 'hex'));
    });
    if (!ok) {
      throw new S3Error(
        'SignatureDoesNotMatch',
        'The request signature we calculated does not match the signature you provided.',
        { AWSAccessKeyId: accessKey },
      );
    }
    if (!['GET', 'HEAD'].includes(ctx.method) && !writers.has(accessKey)) {
      throw denied('This key may only read');
    }
    /* s3rver's own check then takes the request as signed by its account. */
    return next();
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const keys = JSON.parse(fs.readFileSync(opts.keys, 'utf8'));
  const address = opts.address || '127.0.0.1';
  if (!['127.0.0.1', '::1', 'localhost'].includes(address)) {
    throw new Error('listens on loopback only');
  }

  /* Only the configured keys exist; s3rver's default pair is withdrawn. */
  AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(keys.downloader[0], keys.downloader[1]);
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(keys.uploader[0], keys.uploader[1]);

  const serverOpts = {
    directory: opts.directory,
    address,
    port: Number(opts.port),
    silent: false,
    vhostBuckets: false,
    configureBuckets: opts.buckets.map(name => ({ name, configs: [] })),
  };
  if (opts.key && opts.cert) {
    serverOpts.key = fs.readFileSync(opts.key);
    serverOpts.cert = fs.readFileSync(opts.cert);
  }
  const server = new S3rver(serverOpts);
  /* Right after the logger, before s3rver's routes and its own auth. */
  server.middleware.splice(1, 0, verifier(keys));
  const { port } = await server.run();
  console.log('s3_server listening on %s:%d', address, port);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch(err => {
  console.error('s3_server:', err.message || err);
  process.exit(1);
});
