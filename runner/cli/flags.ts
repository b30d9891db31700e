// The step runner's flags: one spec per step, parsed by Node's util.parseArgs, with the help text made from the
// same spec. One vocabulary across steps: --old is the old cluster's container, --new the new (staging) one,
// --major/--image/--data the new cluster's; --container names the one cluster a step acts on.
import { parseArgs } from "node:util";
import { StepError } from "../step-error";

export interface FlagSpec {
    help: string;
    /** A switch: present or not, no value. */
    boolean?: true;
    optional?: true;
    /** The only values it takes. */
    choices?: readonly string[];
    /** Names it had before, still accepted for one release (a stack's stored delete command uses them). */
    was?: string[];
}

export type FlagSpecs = Record<string, FlagSpec>;

/** The parsed flags of one step, read by name; what is required was checked when they were parsed. */
export class Flags {
    constructor(private readonly values: Record<string, string | boolean | undefined>) {}

    str(name: string): string {
        return this.values[name] as string;
    }

    opt(name: string): string | undefined {
        return this.values[name] as string | undefined;
    }

    on(name: string): boolean {
        return this.values[name] === true;
    }

    /** A whole number from 1 (or from 0). */
    int(name: string, from: 0 | 1 = 1): number {
        const n = Number(this.values[name]);
        if (!Number.isInteger(n) || n < from)
            throw new StepError(
                `--${name} must be a whole number${from === 0 ? " from 0" : ""}, not "${this.values[name]}".`,
            );
        return n;
    }
}

export function parseFlags(specs: FlagSpecs, argv: string[]): Flags {
    const options: Record<string, { type: "string" | "boolean"; multiple: true }> = {};
    const canonical = new Map<string, string>();
    for (const [name, spec] of Object.entries(specs)) {
        for (const n of [name, ...(spec.was ?? [])]) {
            options[n] = { type: spec.boolean ? "boolean" : "string", multiple: true };
            canonical.set(n, name);
        }
    }
    let parsed: Record<string, (string | boolean)[] | undefined>;
    try {
        parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as typeof parsed;
    } catch (err) {
        throw new StepError(`${parseError(err as Error & { code?: string })}; see --help.`);
    }
    const values: Record<string, string | boolean | undefined> = {};
    for (const [given, list] of Object.entries(parsed)) {
        const name = canonical.get(given)!;
        if (values[name] !== undefined || list!.length > 1)
            throw new StepError(`--${name} is given more than once${given === name ? "" : ` (as --${given})`}.`);
        values[name] = list![0];
    }
    for (const [name, spec] of Object.entries(specs)) {
        const value = values[name];
        if (value === undefined && !spec.optional && !spec.boolean)
            throw new StepError(`--${name} is required (${spec.help}); see --help.`);
        if (spec.choices && value !== undefined && !spec.choices.includes(value as string)) {
            throw new StepError(`--${name} must be ${spec.choices.join(" or ")}, not "${value}".`);
        }
    }
    return new Flags(values);
}

/** util.parseArgs says "Option '--x <value>' argument missing"; the runner's errors are sentences of its own. */
function parseError(err: Error & { code?: string }): string {
    const flag = /'(-[^' ]+)/.exec(err.message)?.[1] ?? "";
    switch (err.code) {
        case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
            return `Unknown argument "${flag}"`;
        case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
            return `Unexpected argument "${/'([^']*)'/.exec(err.message)?.[1] ?? ""}"`;
        case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
            if (/does not take/.test(err.message)) return `${flag} is a switch and takes no value`;
            return /ambiguous/.test(err.message)
                ? `${flag} needs a value (one starting with "-" is given as ${flag}=<value>)`
                : `${flag} needs a value`;
        default:
            return err.message;
    }
}

/** The lines of a step's --help: each flag, its value, what it is, and its old names. */
export function describeFlags(specs: FlagSpecs): string[] {
    return Object.entries(specs).map(([name, spec]) => {
        const value = spec.boolean ? "" : spec.choices ? ` <${spec.choices.join("|")}>` : " <value>";
        const notes = [
            spec.optional || spec.boolean ? "optional" : "",
            spec.was ? `was ${spec.was.map((w) => `--${w}`).join(", ")}` : "",
        ].filter(Boolean);
        return `  --${name}${value}`.padEnd(30) + spec.help + (notes.length ? ` (${notes.join("; ")})` : "");
    });
}
