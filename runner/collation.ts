// Collations: pg_upgrade carries index files as they are, so an index sorted by the C library's collation rules is
// only valid if the new image's C library sorts the same way. Across a glibc change (Debian bookworm's 2.36 to
// trixie's 2.41, the official image's move in 2025) text indexes in a non-C collation can silently return wrong
// results (pgautoupgrade's issue 89 was a Matrix homeserver). Checked before the downtime for method pg_upgrade; a
// dump's restore builds every index anew and is not affected. Synapse's own database uses C, which never changes.
import { queryEachDatabase } from "./docker";
import { run } from "./process";
import { StepError } from "./step-error";

/** Indexes whose order depends on a C-library collation other than C, per database. */
const AFFECTED_INDEXES = `
SELECT count(DISTINCT i.indexrelid)
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS c(coll)
  LEFT JOIN pg_collation co ON co.oid = c.coll
 WHERE c.coll <> 0
   AND CASE WHEN c.coll = 100 THEN (SELECT datcollate FROM pg_database WHERE datname = current_database())
            WHEN co.collprovider = 'c' THEN co.collcollate END NOT IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')`;

/** The C library an image (or a running container) links, as `ldd --version` names it (glibc or musl). */
async function cLibrary(where: { container: string } | { image: string }): Promise<string> {
    const argv = ["sh", "-c", "ldd --version 2>&1 | head -2"];
    const { stdout } = "container" in where
        ? await run("docker", ["exec", where.container, ...argv])
        : await run("docker", ["run", "--rm", "--network", "none", "--entrypoint", argv[0], where.image, ...argv.slice(1)]);
    return stdout.trim().split("\n").find((l) => /libc|GLIBC|musl/i.test(l))?.trim() ?? stdout.trim();
}

/** Refuses method pg_upgrade when an index sorted by a C-library collation would cross a change of C library. */
export async function requireSameCollationRules(old: string, superuser: string, image: string): Promise<void> {
    const [from, to, counts] = await Promise.all([cLibrary({ container: old }), cLibrary({ image }), queryEachDatabase(old, superuser, AFFECTED_INDEXES)]);
    if (from === to) return;
    const affected = counts.filter(({ rows }) => Number(rows[0][0]) > 0).map(({ database, rows }) => `${database} (${rows[0][0]})`);
    if (affected.length === 0) return;
    throw new StepError(`Indexes in ${affected.join(", ")} are sorted by C-library collation rules, and the C library changes from "${from}" in the old image to "${to}" in ${image}: pg_upgrade would carry them unchanged and they could return wrong results; set postgres:method to directory (its restore builds every index anew), or use a new image with the old C library.`);
}
