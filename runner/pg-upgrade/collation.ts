// Collations: pg_upgrade carries index files as they are, so an index sorted by a collation library's rules is only
// valid if the new image's library sorts the same way. Across a glibc change (Debian bookworm's 2.36 to trixie's
// 2.41, the official image's move in 2025) text indexes in a non-C collation can silently return wrong results
// (pgautoupgrade's issue 89 was a Matrix homeserver); across an ICU change (bookworm's 72, trixie's 76) so can
// indexes in an ICU collation. Checked before the downtime for method pg_upgrade; a dump's restore builds every
// index anew and is not affected. Synapse's own database uses C, which never changes.
import { queryEachDatabase } from "../docker/psql";
import { run } from "../docker/process";
import { StepError } from "../step-error";

/**
 * Indexes whose order depends on a C-library collation other than C, and on an ICU collation, per database. A
 * column's collation 100 is the database's default: ICU when the database's provider is (15+, datlocprovider).
 */
function affectedIndexes(oldMajor: number): string {
    const defaultIsIcu =
        oldMajor >= 15 ? "(SELECT datlocprovider = 'i' FROM pg_database WHERE datname = current_database())" : "false";
    return `
SELECT count(DISTINCT i.indexrelid) FILTER (WHERE NOT icu AND libc_rules NOT IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')),
       count(DISTINCT i.indexrelid) FILTER (WHERE icu)
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS c(coll)
  LEFT JOIN pg_collation co ON co.oid = c.coll
  CROSS JOIN LATERAL (SELECT CASE WHEN c.coll = 100 THEN ${defaultIsIcu} ELSE co.collprovider = 'i' END AS icu,
                             CASE WHEN c.coll = 100 THEN (SELECT datcollate FROM pg_database WHERE datname = current_database())
                                  WHEN co.collprovider = 'c' THEN co.collcollate ELSE 'C' END AS libc_rules) AS k
 WHERE c.coll <> 0`;
}

interface Libraries {
    /** The C library, as `ldd --version` names it (glibc or musl). */
    c: string;
    /** The ICU library postgres links (its soname's major, e.g. 72), or none. */
    icu: string;
}

/** The collation libraries of an image, or of a running container, read with its own tools. */
async function libraries(where: { container: string } | { image: string }): Promise<Libraries> {
    const argv = [
        "sh",
        "-c",
        'ldd --version 2>&1 | head -2; echo ---; ldd "$(command -v postgres)" 2>/dev/null | grep -o "libicuuc\\.so\\.[0-9]*"',
    ];
    const { stdout } =
        "container" in where
            ? await run("docker", ["exec", where.container, ...argv])
            : await run("docker", [
                  "run",
                  "--rm",
                  "--network",
                  "none",
                  "--entrypoint",
                  argv[0],
                  where.image,
                  ...argv.slice(1),
              ]);
    const [libc, icu] = stdout.split("---");
    return {
        c:
            libc
                .trim()
                .split("\n")
                .find((l) => /libc|GLIBC|musl/i.test(l))
                ?.trim() ?? libc.trim(),
        icu: /libicuuc\.so\.(\d+)/.exec(icu ?? "")?.[1] ?? "none",
    };
}

/** Refuses method pg_upgrade when an index sorted by a collation library would cross a change of that library. */
export async function requireSameCollationRules(
    old: string,
    superuser: string,
    image: string,
    oldMajor: number,
): Promise<void> {
    const [from, to, counts] = await Promise.all([
        libraries({ container: old }),
        libraries({ image }),
        queryEachDatabase(old, superuser, affectedIndexes(oldMajor)),
    ]);
    const affected = (column: number) =>
        counts
            .filter(({ rows }) => Number(rows[0][column]) > 0)
            .map(({ database, rows }) => `${database} (${rows[0][column]})`);
    const changes = [
        ...(from.c !== to.c && affected(0).length
            ? [
                  `Indexes in ${affected(0).join(", ")} are sorted by C-library collation rules, and the C library changes from "${from.c}" in the old image to "${to.c}" in ${image}`,
              ]
            : []),
        ...(from.icu !== to.icu && affected(1).length
            ? [
                  `Indexes in ${affected(1).join(", ")} are sorted by ICU collation rules, and ICU changes from ${from.icu} in the old image to ${to.icu} in ${image}`,
              ]
            : []),
    ];
    if (changes.length === 0) return;
    throw new StepError(
        `${changes.join("; ")}: pg_upgrade would carry them unchanged and they could return wrong results; set postgres:method to directory (its restore builds every index anew), or use a new image with the old library.`,
    );
}
