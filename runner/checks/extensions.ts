// Extensions: every extension installed in a database of the old cluster must exist in the new image, or the
// restore's CREATE EXTENSION (or pg_upgrade's library check) fails during the downtime. Compared before anything
// is touched: a missing one is refused by name. pg_upgrade keeps each extension at its old version, so those the
// new image has newer are listed with the ALTER EXTENSION ... UPDATE to run (a dump's CREATE EXTENSION takes the
// new image's default version, so after a dump there is nothing to update).
import { query, queryEachDatabase, quoteIdent } from "../docker/psql";
import { run } from "../docker/process";
import { StepError } from "../step-error";

export interface InstalledExtension {
    database: string;
    name: string;
    version: string;
}

export interface ExtensionUpdate extends InstalledExtension {
    /** The new image's default version. */
    to: string;
}

/** Each extension the image ships, with its default version, read from its control files. */
export async function availableExtensions(image: string): Promise<Map<string, string>> {
    const script = `d="$(pg_config --sharedir)/extension"
for f in "$d"/*.control; do
  printf '%s\\t%s\\n' "$(basename "$f" .control)" "$(sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\\(.*\\)'.*/\\1/p" "$f")"
done`;
    const { stdout } = await run("docker", [
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        script,
    ]);
    return new Map(
        stdout
            .split("\n")
            .filter(Boolean)
            .map((line) => line.split("\t") as [string, string]),
    );
}

export async function installedExtensions(container: string, superuser: string): Promise<InstalledExtension[]> {
    const found = await queryEachDatabase(
        container,
        superuser,
        "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    );
    return found.flatMap(({ database, rows }) => rows.map(([name, version]) => ({ database, name, version })));
}

/** Refuses when an installed extension is missing from the image; returns those the image has in another version. */
export function compareExtensions(
    installed: InstalledExtension[],
    available: Map<string, string>,
    image: string,
): ExtensionUpdate[] {
    const missing = installed.filter((e) => !available.has(e.name));
    if (missing.length > 0) {
        const names = [
            ...new Set(
                missing.map(
                    (e) =>
                        `${e.name} ${e.version} (in ${missing
                            .filter((m) => m.name === e.name)
                            .map((m) => m.database)
                            .join(", ")})`,
                ),
            ),
        ];
        throw new StepError(
            `The old cluster uses the extension${names.length > 1 ? "s" : ""} ${names.join(", ")}, which ${image} does not have: the new cluster could not load ${names.length > 1 ? "them" : "it"}; choose an image that ships ${names.length > 1 ? "them" : "it"} (postgres:image), or drop ${names.length > 1 ? "them" : "it"} from the old cluster if unused.`,
        );
    }
    return installed
        .filter((e) => available.get(e.name) !== e.version)
        .map((e) => ({ ...e, to: available.get(e.name)! }));
}

export async function checkExtensions(container: string, superuser: string, image: string): Promise<ExtensionUpdate[]> {
    const [installed, available] = await Promise.all([
        installedExtensions(container, superuser),
        availableExtensions(image),
    ]);
    return compareExtensions(installed, available, image);
}

/** "pg_trgm 1.3 -> 1.6 in synapse (ALTER EXTENSION pg_trgm UPDATE)" */
export function describeUpdates(updates: ExtensionUpdate[]): string {
    return updates
        .map((u) => `${u.name} ${u.version} -> ${u.to} in ${u.database} (ALTER EXTENSION ${u.name} UPDATE)`)
        .join(", ");
}

/**
 * After pg_upgrade, on the new cluster once it serves: each extension older than the new image's default is
 * updated (pg_upgrade's own advice, its update_extensions.sql). A failure is reported, not fatal: the extension
 * keeps working at its old version.
 */
export async function updateExtensions(
    container: string,
    superuser: string,
): Promise<{ updated: ExtensionUpdate[]; failed: string[] }> {
    const found = await queryEachDatabase(
        container,
        superuser,
        "SELECT e.extname, e.extversion, a.default_version FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extversion IS DISTINCT FROM a.default_version ORDER BY 1",
    );
    const updated: ExtensionUpdate[] = [];
    const failed: string[] = [];
    for (const { database, rows } of found) {
        for (const [name, version, to] of rows) {
            await query(container, superuser, `ALTER EXTENSION ${quoteIdent(name)} UPDATE`, database).then(
                () => updated.push({ database, name, version, to }),
                (err: Error) => failed.push(`${name} in ${database} (${err.message.trim().split("\n").pop()})`),
            );
        }
    }
    return { updated, failed };
}
