// The few rewrites a pg_dumpall script needs before the new cluster can load it, done on bytes as the dump
// streams past. Lines inside COPY data are never looked at (a message body may read "CREATE ROLE ..."), and lines
// are split on the \n byte, which never occurs inside a UTF-8 multibyte character, so text is never re-encoded.
import { Transform, TransformCallback } from "node:stream";
import { quoteIdent } from "../docker/psql";

export interface FilterCounts {
    /** CREATE ROLE lines of the bootstrap superuser removed (the image already created it). */
    bootstrapRoleSkipped: number;
    /** pg_attver column options removed (see below). */
    attverOptionsDropped: number;
}

const NEWLINE = 0x0a;
const COPY_END = Buffer.from("\\.\n");
const ATTVER = /(, )?pg_attver=\d+(, )?/;

export class DumpFilter extends Transform {
    readonly counts: FilterCounts = { bootstrapRoleSkipped: 0, attverOptionsDropped: 0 };
    private carry = Buffer.alloc(0);
    private inCopy = false;
    private readonly skipRole: Set<string>;

    constructor(bootstrapSuperuser: string) {
        super();
        // The image already created the bootstrap superuser: its CREATE ROLE would stop the restore with the
        // guide's `role "synapse" already exists`. Its ALTER ROLE, with the password hash, stays.
        const su = bootstrapSuperuser;
        this.skipRole = new Set([`CREATE ROLE ${quoteIdent(su)};\n`, `CREATE ROLE "${su.replace(/"/g, '""')}";\n`]);
    }

    _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
        const data = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
        const out: Buffer[] = [];
        let start = 0;
        for (let nl = data.indexOf(NEWLINE, start); nl !== -1; nl = data.indexOf(NEWLINE, start)) {
            const line = data.subarray(start, nl + 1);
            const kept = this.rewrite(line);
            if (kept) out.push(kept);
            start = nl + 1;
        }
        this.carry = Buffer.from(data.subarray(start));
        done(null, out.length ? Buffer.concat(out) : undefined);
    }

    _flush(done: TransformCallback): void {
        done(null, this.carry.length ? this.rewrite(this.carry) : undefined);
    }

    private rewrite(line: Buffer): Buffer | undefined {
        if (this.inCopy) {
            if (line.equals(COPY_END)) this.inCopy = false;
            return line;
        }
        const first = line[0];
        // Only statements starting with C(OPY/REATE) or A(LTER) are ever changed; everything else passes as bytes.
        if (first !== 0x43 && first !== 0x41) return line;
        const text = line.toString("utf8");
        if (text.startsWith("COPY ") && text.endsWith(" FROM stdin;\n")) {
            this.inCopy = true;
            return line;
        }
        if (this.skipRole.has(text)) {
            this.counts.bootstrapRoleSkipped++;
            return undefined;
        }
        // PostgreSQL 17.12 (Nov 2026) keeps an internal per-column version marker in attoptions (pg_attver).
        // pg_dump 17.12 leaves it out; pg_dump 18.6, released before it, writes it as a column option, which
        // the 18.6 server rejects: `unrecognized parameter "pg_attver"`. It is the old server's own bookkeeping,
        // not a user setting, so it is dropped.
        if (text.startsWith("ALTER TABLE ") && text.includes("pg_attver=")) {
            const m = /^(.* SET \()(.*)(\);\n)$/s.exec(text);
            if (m) {
                const options = m[2].replace(ATTVER, (_all, before, after) => (before && after ? ", " : ""));
                this.counts.attverOptionsDropped++;
                return options.trim() === "" ? undefined : Buffer.from(m[1] + options + m[3]);
            }
        }
        return line;
    }
}
