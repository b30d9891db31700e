// The dump filter on bytes: no Docker needed.
import { strict as assert } from "node:assert";
import { Readable } from "node:stream";
import { DumpFilter } from "../../../runner/dump/filter";

async function filter(chunks: Buffer[], superuser = "synapse"): Promise<{ text: string; f: DumpFilter }> {
    const f = new DumpFilter(superuser);
    const out: Buffer[] = [];
    for await (const c of Readable.from(chunks).pipe(f)) out.push(c as Buffer);
    return { text: Buffer.concat(out).toString("utf8"), f };
}

/** Splits at every byte, so every multibyte character is cut at some boundary. */
function byteChunks(text: string): Buffer[] {
    return [...Buffer.from(text, "utf8")].map((b) => Buffer.from([b]));
}

describe("dump filter", () => {
    it("passes multibyte text cut at any byte boundary through unchanged", async () => {
        const dump = 'COPY public.events (content) FROM stdin;\n{"body": "你好 🧑‍🤝‍🧑 Привет مرحبا"}\n\\.\nSELECT 1;\n';
        const { text } = await filter(byteChunks(dump));
        assert.equal(text, dump);
    });

    it("removes only the bootstrap superuser's CREATE ROLE and keeps its ALTER ROLE with the password", async () => {
        const dump =
            'CREATE ROLE "synapse";\nALTER ROLE "synapse" WITH SUPERUSER LOGIN PASSWORD \'SCRAM-SHA-256$x\';\nCREATE ROLE "other";\n';
        const { text, f } = await filter([Buffer.from(dump)]);
        assert.equal(
            text,
            'ALTER ROLE "synapse" WITH SUPERUSER LOGIN PASSWORD \'SCRAM-SHA-256$x\';\nCREATE ROLE "other";\n',
        );
        assert.equal(f.counts.bootstrapRoleSkipped, 1);
    });

    it("never touches COPY data, even a row that reads like a statement it rewrites", async () => {
        const dump =
            'COPY public.notes (t) FROM stdin;\nCREATE ROLE "synapse";\nALTER TABLE ONLY x ALTER COLUMN y SET (pg_attver=5);\n\\.\nCREATE ROLE "synapse";\n';
        const { text } = await filter(byteChunks(dump));
        assert.equal(
            text,
            'COPY public.notes (t) FROM stdin;\nCREATE ROLE "synapse";\nALTER TABLE ONLY x ALTER COLUMN y SET (pg_attver=5);\n\\.\n',
        );
    });

    it("drops the 17.12 pg_attver column marker, alone or among other column options", async () => {
        const dump = [
            'ALTER TABLE ONLY "public"."t" ALTER COLUMN "id" SET (pg_attver=26779480);',
            'ALTER TABLE ONLY "public"."s" ALTER COLUMN "g" SET (n_distinct=-0.02, pg_attver=26779480);',
            'ALTER TABLE ONLY "public"."s" ALTER COLUMN "h" SET (pg_attver=1, n_distinct=-0.5);',
            'ALTER TABLE ONLY "public"."s" ALTER COLUMN "g" SET (n_distinct=-0.02);',
            "",
        ].join("\n");
        const { text, f } = await filter([Buffer.from(dump)]);
        assert.equal(
            text,
            [
                'ALTER TABLE ONLY "public"."s" ALTER COLUMN "g" SET (n_distinct=-0.02);',
                'ALTER TABLE ONLY "public"."s" ALTER COLUMN "h" SET (n_distinct=-0.5);',
                'ALTER TABLE ONLY "public"."s" ALTER COLUMN "g" SET (n_distinct=-0.02);',
                "",
            ].join("\n"),
        );
        assert.equal(f.counts.attverOptionsDropped, 3);
    });

    it("keeps a last line that has no newline", async () => {
        const { text } = await filter([Buffer.from("SELECT 1;\n-- end")]);
        assert.equal(text, "SELECT 1;\n-- end");
    });
});
