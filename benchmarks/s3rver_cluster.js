// s3rver (the npm package) on 127.0.0.1 in WORKERS processes sharing one port (node's cluster module) and one
// folder, so one Node event loop per core answers requests (benchmarks/object_store.py starts it).
// Usage: node s3rver_cluster.js S3RVER_MODULE_DIR FOLDER WORKERS ACCESS_KEY SECRET_KEY
// Prints "ready PORT" once every worker listens; SIGTERM, or the end of its stdin, stops the workers and itself.
"use strict";
const cluster = require("node:cluster");
const fs = require("node:fs");
const path = require("node:path");
const [moduleDir, directory, workers, accessKey, secretKey] = process.argv.slice(2);

if (cluster.isPrimary) {
  let listening = 0;
  const stop = (code) => {
    for (const worker of Object.values(cluster.workers)) worker.kill();
    process.exit(code);
  };
  cluster.on("listening", (worker, address) => {
    if (++listening === Number(workers)) console.log(`ready ${address.port}`);
  });
  cluster.on("exit", () => stop(1)); // a worker gone: no half server
  process.on("SIGTERM", () => stop(0));
  // the suite holds our stdin open: its end (the suite gone, even killed outright) stops the server too
  process.stdin.on("end", () => {
    fs.rmSync(directory, { recursive: true, force: true }); // its objects: nobody removes them otherwise
    stop(0);
  }).resume();
  process.on("SIGINT", () => stop(0));
  for (let i = 0; i < Number(workers); i++) cluster.fork();
} else {
  // s3rver knows one account (S3RVER/S3RVER); the suite's key pair is added to it, and signatures are checked
  require(path.join(moduleDir, "lib", "models", "account")).DUMMY_ACCOUNT.createKeyPair(accessKey, secretKey);
  const S3rver = require(moduleDir);
  // port 0 in every worker: the cluster's primary gives them all the same free port
  new S3rver({ address: "127.0.0.1", port: 0, directory, silent: true }).run();
}
