import { run } from "../runner/process";
import { seedSynapse } from "../tests/fixtures/seed";
(async () => {
  await run("docker", ["run", "-d", "--name", "exp-pg15", "--shm-size", "256m", "-e", "POSTGRES_USER=synapse", "-e", "POSTGRES_PASSWORD=pw",
    "-e", "POSTGRES_INITDB_ARGS=--encoding=UTF8 --lc-collate=C --lc-ctype=C", "-v", "exp-pgsql15:/var/lib/postgresql/data", "synapse-pg-test/postgres:15"]);
  for (let i = 0; i < 60; i++) { if (await run("docker", ["exec", "exp-pg15", "psql", "-h", "127.0.0.1", "-U", "synapse", "-d", "postgres", "-c", "select 1"]).then(() => true, () => false)) break; await new Promise(r => setTimeout(r, 1000)); }
  await seedSynapse("exp-pg15", "synapse", { sizeMB: 1000, seed: 1 });
  console.log("seeded");
})();
