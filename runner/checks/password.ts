// The serving cluster's password is the stack's (postgres:password, in the container's POSTGRES_PASSWORD). The
// image applies POSTGRES_PASSWORD only when it initialises an empty folder, so a changed postgres:password would
// replace the container and change nothing: the old password would still log in, the new one be refused. serve
// therefore tries the declared password over TCP, as Synapse logs in, and when the server refuses it as a wrong
// password, sets it with psql's \password (which sends only the scram verifier) and tries again.
import { ContainerInfo, inspectContainer, superuserOf } from "../docker/containers";
import { quoteIdent, dbConninfo } from "../docker/psql";
import { MANAGED_LABEL } from "../names";
import { run } from "../docker/process";
import { StepError } from "../step-error";

/**
 * Why a login as `user` with the password over TCP failed, or undefined when it succeeded. From inside the
 * container to its own address on a Docker network, so the connection meets pg_hba's host rule as Synapse's does.
 */
export async function tcpLoginError(
    info: ContainerInfo,
    user: string,
    password: string,
    database: string,
): Promise<string | undefined> {
    const ip = Object.values(info.networks)
        .map((n) => n.ip)
        .find((a) => a !== "");
    if (!ip) return `"${info.name}" has no network address to test a TCP login on`;
    try {
        await run(
            "docker",
            [
                "exec",
                "-e",
                "PGPASSWORD",
                info.name,
                "psql",
                "-X",
                "-h",
                ip,
                "-U",
                user,
                "-d",
                dbConninfo(database),
                "-Atc",
                "SELECT 1",
            ],
            { env: { PGPASSWORD: password } },
        );
        return undefined;
    } catch (err) {
        return (err as Error).message;
    }
}

/**
 * Sets a role's password as a scram-sha-256 verifier with psql's \password, which computes the verifier in psql
 * and sends only that (a server that logs statements never logs the password). The caller refuses line breaks.
 */
export async function setPassword(container: string, superuser: string, role: string, password: string): Promise<void> {
    // \password asks twice; without a terminal psql reads both answers from stdin, after the script's lines.
    await run(
        "docker",
        ["exec", "-i", container, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", superuser, "-d", "postgres"],
        {
            stdin: `SET password_encryption = 'scram-sha-256';\n\\password ${quoteIdent(role)}\n${password}\n${password}\n`,
        },
    );
}

/**
 * Makes the declared password the one that logs in, for a container we created (an adopted one's environment
 * may be stale, and its password is the user's). Returns the role whose password was set, if one was.
 */
export async function applyDeclaredPassword(container: string, database: string): Promise<string | undefined> {
    const info = await inspectContainer(container);
    const password = info?.env.POSTGRES_PASSWORD;
    if (!info || !password || info.labels[MANAGED_LABEL] !== "true") return undefined;
    const role = superuserOf(info);
    const refused = await tcpLoginError(info, role, password, database);
    if (refused === undefined || !/password authentication failed/.test(refused)) return undefined;
    if (/[\r\n]/.test(password)) {
        throw new StepError(
            `postgres:password does not log in as ${role} and holds a line break, which psql's \\password cannot read; set the role's password by hand and run pulumi up again.`,
        );
    }
    await setPassword(container, role, role, password);
    const still = await tcpLoginError(info, role, password, database);
    if (still !== undefined)
        throw new StepError(
            `postgres:password was set for the role ${role} on "${container}" but still does not log in (${still.trim().split("\n").pop()}); check its pg_hba.conf.`,
        );
    return role;
}
