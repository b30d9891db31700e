// Flags several steps share, with what they become: the old and new clusters, the login, the configuration's
// flags, and the password, which only the environment carries.
import { parseDataLocation } from "../target/layout";
import { PASSWORD_ENV } from "../names";
import { StepError } from "../step-error";
import { Flags, FlagSpec, FlagSpecs } from "./flags";

export const OLD: FlagSpec = { help: "the old cluster's container" };
export const NEW: FlagSpec = { help: "the new cluster's (staging) container" };

/** Where the new cluster is: its major, image and data location. */
export const NEW_CLUSTER: FlagSpecs = {
    major: { help: "the new major" },
    image: { help: "the new major's image" },
    data: { help: "the new cluster's volume name or absolute host folder" },
};

export const LOGIN: FlagSpecs = {
    "login-user": { help: "the role Synapse logs in as (default synapse)", optional: true },
    "login-database": { help: "its database (default synapse)", optional: true },
};

/** The configuration's flags, shared by copy-config and prepare. */
export const CONFIG: FlagSpecs = {
    settings: {
        help: "postgres:settings as a JSON object: checked against the copied files, before the switch",
        optional: true,
    },
    drop: {
        help: "parameters (comma-separated) to leave out of the new cluster if its server rejects them (postgres:dropSettings)",
        optional: true,
    },
    "drop-access-rules": {
        help: "access rules as <file>:<line> of the old cluster (comma-separated) to leave out of the new cluster if its server rejects them (postgres:dropAccessRules)",
        optional: true,
    },
};

export const SYNAPSE: FlagSpec = {
    help: "Synapse's containers, comma-separated: stopped first; started again on the old cluster if this step fails (serve: after the switch)",
    optional: true,
};

export function newClusterInput(f: Flags) {
    return { image: f.str("image"), data: parseDataLocation(f.str("data")), major: f.int("major") };
}

export function loginInput(f: Flags) {
    return { loginUser: f.opt("login-user") ?? "synapse", loginDatabase: f.opt("login-database") ?? "synapse" };
}

export function configInput(f: Flags) {
    return { settings: settingsFlag(f), drop: listFlag(f, "drop"), dropAccessRules: listFlag(f, "drop-access-rules") };
}

/** --settings: the JSON map the program passes (postgres:settings). */
export function settingsFlag(f: Flags): Record<string, string> {
    const given = f.opt("settings");
    if (given === undefined) return {};
    try {
        const value = JSON.parse(given);
        if (typeof value === "object" && value !== null && !Array.isArray(value))
            return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, String(v)]));
    } catch {
        // reported below
    }
    throw new StepError(
        `--settings must be a JSON object of PostgreSQL settings, like {"work_mem":"16MB"}, not "${given}".`,
    );
}

/** --command: the server command line the program passes, as a JSON list. */
export function commandFlag(f: Flags): string[] | undefined {
    const given = f.opt("command");
    if (given === undefined) return undefined;
    try {
        const value = JSON.parse(given);
        if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value;
    } catch {
        // reported below
    }
    throw new StepError(`--command must be a JSON list like ["postgres","-c","work_mem=16MB"], not "${given}".`);
}

function listFlag(f: Flags, name: "drop" | "drop-access-rules"): string[] {
    return (f.opt(name) ?? "")
        .split(",")
        .map((n) => n.trim())
        .filter(Boolean);
}

export function password(required: true): string;
export function password(required: false): string | undefined;
export function password(required: boolean): string | undefined {
    const pw = process.env[PASSWORD_ENV];
    if (required && !pw)
        throw new StepError(
            `Set ${PASSWORD_ENV} in the environment to the database password; it is never taken from the command line.`,
        );
    return pw || undefined;
}
