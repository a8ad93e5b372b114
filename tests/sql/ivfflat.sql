-- SQL snapshot: ivfflat. Documents with an IVFFlat l2 field, built with 100 lists.
-- Generated: PIXSEARCH_UPDATE_SQL=1 pytest tests/test_sql_snapshots.py. Do not edit by hand.
-- Placeholders are bound parameters (%s by position, %(name)s by name); values never reach the SQL.

-- TableDefinition.create: the table
CREATE TABLE "px_lists" ("id" text PRIMARY KEY, "title" text, "category" bigint, "labels" text[],
    indexed_at timestamptz NOT NULL DEFAULT now(), "search_text" tsvector, "v" vector(128));

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_lists_search_text_gin" ON "px_lists" USING gin ("search_text");

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_lists_title_trgm" ON "px_lists" USING gin ("title" gin_trgm_ops);

-- TableDefinition.create_lookup_indexes: does the lookup index exist
SELECT to_regclass(%s);

-- TableDefinition.build_index (100,000 rows): the ANN index of v
CREATE INDEX "px_lists_v_ivfflat" ON "px_lists" USING ivfflat ("v" vector_l2_ops) WITH ("lists" = 100);

-- TableDefinition.build_index / drop_ann_index: the ANN index of v
DROP INDEX IF EXISTS "px_lists_v_ivfflat";

-- TableDefinition.build_index: the build's memory and workers
--   bound to: maintenance_work_mem = 1024MB, max_parallel_maintenance_workers = 3
SELECT set_config(%s, %s, true), set_config(%s, %s, true);

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_lists" ADD COLUMN IF NOT EXISTS "labels" text[];

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_lists" ADD COLUMN IF NOT EXISTS "v" vector(128);

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_lists" ADD COLUMN IF NOT EXISTS "search_text" tsvector;

-- TableDefinition.drop_columns: one column
ALTER TABLE "px_lists" DROP COLUMN IF EXISTS "v";

-- TableDefinition.lock_against_writes: before a definition change checks the rows
LOCK TABLE "px_lists" IN SHARE ROW EXCLUSIVE MODE;

-- TableDefinition.ann_indexes_ready
SELECT c.relname, i.indisvalid
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = to_regclass(%s);

-- TableDefinition.build_progress
SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total
FROM pg_stat_progress_create_index
WHERE relid = to_regclass(%s);

-- TableDefinition.rename_to: the table
ALTER TABLE "px_lists" RENAME TO "px_lists_renamed";

-- TableDefinition.rename_to: its indexes
SELECT indexname
FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = %s;

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_lists_v_ivfflat" RENAME TO "px_lists_renamed_v_ivfflat";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_lists_search_text_gin" RENAME TO "px_lists_renamed_search_text_gin";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_lists_title_trgm" RENAME TO "px_lists_renamed_title_trgm";

-- registry.delete_index
DROP TABLE IF EXISTS "px_lists";

-- VectorQueries.search: plain, standalone: session settings
--   bound to: ivfflat.probes = 10, ivfflat.iterative_scan = off
SELECT set_config(%s, %s, false), set_config(%s, %s, false);

-- VectorQueries.search: plain, in a snapshot or a transaction of its own
--   bound to: enable_indexscan = on, ivfflat.probes = 10, ivfflat.iterative_scan = off
SELECT set_config(%s, %s, true), set_config(%s, %s, true), set_config(%s, %s, true);

-- VectorQueries.search: plain kNN of v
SELECT "id", "title", "category", "labels", "v" <-> %(q)s AS distance
FROM "px_lists"
ORDER BY "v" <-> %(q)s
LIMIT %(k)s;

-- VectorQueries.search: filtered, standalone: session settings
--   bound to: ivfflat.probes = 10, ivfflat.iterative_scan = relaxed_order, ivfflat.max_probes = 100
SELECT set_config(%s, %s, false), set_config(%s, %s, false), set_config(%s, %s, false);

-- VectorQueries.search: filtered, in a snapshot or a transaction of its own
--   bound to: enable_indexscan = on, ivfflat.probes = 10, ivfflat.iterative_scan = relaxed_order, ivfflat.max_probes = 100
SELECT set_config(%s, %s, true), set_config(%s, %s, true), set_config(%s, %s, true), set_config(%s, %s, true);

-- VectorQueries.search: filtered kNN of v
WITH hits AS MATERIALIZED (
  SELECT "id", "title", "category", "labels", "v" <-> %(q)s AS distance
  FROM "px_lists"
  WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
  ORDER BY "v" <-> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.search: exact, in a snapshot or a transaction of its own
--   bound to: enable_indexscan = off
SELECT set_config(%s, %s, true);

-- VectorQueries.search: exact kNN of v
WITH hits AS MATERIALIZED (
  SELECT "id", "title", "category", "labels", "v" <-> %(q)s AS distance
  FROM "px_lists"
  WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
  ORDER BY "v" <-> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.search: why a search came back short
SELECT count(*)
FROM (
  SELECT 1
  FROM "px_lists"
  WHERE "v" IS NOT NULL AND ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
  LIMIT %(limit)s) AS matching;

-- VectorQueries.search: exact for a very selective filter? the table's rows
SELECT reltuples
FROM pg_class
WHERE oid = %s::regclass;

-- VectorQueries.search: ... and the filter's
EXPLAIN (FORMAT JSON)
SELECT 1
FROM "px_lists"
WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s]);

-- VectorQueries.explain
EXPLAIN WITH hits AS MATERIALIZED (
  SELECT "id", "title", "category", "labels", "v" <-> %(q)s AS distance
  FROM "px_lists"
  WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
  ORDER BY "v" <-> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.near_pairs
--   bound to: enable_indexscan = on, ivfflat.probes = 10, ivfflat.iterative_scan = off
SELECT set_config(%s, %s, true), set_config(%s, %s, true), set_config(%s, %s, true);

-- VectorQueries.near_pairs: each row's nearest neighbours
SELECT a."id", n."id", n.distance
FROM "px_lists" a
CROSS JOIN LATERAL (
  SELECT b."id", b."v" <-> a."v" AS distance
  FROM "px_lists" b
  WHERE b."v" IS NOT NULL
  ORDER BY b."v" <-> a."v"
  LIMIT %(k)s) n
WHERE a."v" IS NOT NULL AND n."id" > a."id" AND n.distance <= %(max)s;

-- VectorQueries.iter_vectors: an export, through a server-side cursor
SELECT "id", "v"
FROM "px_lists"
WHERE "v" IS NOT NULL
ORDER BY "id";

-- VectorQueries.sample_vectors
SELECT setseed(%s);

-- VectorQueries.sample_vectors
SELECT "id", "v"
FROM "px_lists"
WHERE "v" IS NOT NULL
ORDER BY random()
LIMIT %s;

-- TableQueries.keyword_search: the general keyword list, filtered
SELECT "id", coalesce(ts_rank_cd("search_text", websearch_to_tsquery('english', unaccent(%(any_word)s))),
    0) + greatest(coalesce(word_similarity(%(text)s, "title"), 0)) AS score
FROM "px_lists"
WHERE ("search_text" @@ websearch_to_tsquery('english', unaccent(%(any_word)s)) OR %(text)s <%% "title") AND ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
ORDER BY score DESC, "id"
LIMIT %(limit)s;

-- TableQueries.browse: one page, filtered
SELECT "id", "title", "category", "labels"
FROM "px_lists"
WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])
ORDER BY "category" ASC NULLS LAST, indexed_at DESC, "id"
LIMIT %(limit)s OFFSET %(offset)s;

-- TableQueries.browse: how many pass the filter
SELECT count(*)
FROM "px_lists"
WHERE ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s]);

-- TableQueries.facet_counts: category, filtered
SELECT value, count(*) AS n
FROM (
  SELECT "category" AS value
  FROM "px_lists"
  WHERE "category" IS NOT NULL AND ("category" = %(f0)s AND "labels" @> ARRAY[%(f1)s])) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: labels: each element
SELECT value, count(*) AS n
FROM (
  SELECT unnest("labels") AS value
  FROM "px_lists"
  WHERE "labels" IS NOT NULL) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.fetch: retrievable fields by key
SELECT "id", "title", "category", "labels"
FROM "px_lists"
WHERE "id" = ANY(%s);

-- TableQueries.keys_missing: the first batch of a re-index
SELECT "id"
FROM "px_lists"
WHERE ("v" IS NULL)
ORDER BY "id"
LIMIT %(limit)s;

-- TableQueries.keys_missing: the next batches
SELECT "id"
FROM "px_lists"
WHERE ("v" IS NULL) AND "id" > %(after)s
ORDER BY "id"
LIMIT %(limit)s;

-- TableWrites.write: the staging table
CREATE TEMP TABLE "pixsearch_staging" (LIKE "px_lists" INCLUDING DEFAULTS) ON COMMIT DROP;

-- TableWrites.write: whole documents
COPY "pixsearch_staging" ("id", "title", "category", "labels", "v")
FROM STDIN (FORMAT BINARY);

-- TableWrites.write: whole documents: upsert
INSERT INTO "px_lists" ("id", "title", "category", "labels", "v", "indexed_at", "search_text")
SELECT "id", "title", "category", "labels", "v", now(), (to_tsvector('simple', unaccent(concat_ws(' ',
    regexp_replace(coalesce("pixsearch_staging"."title", ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english',
    unaccent(concat_ws(' ', regexp_replace(coalesce("pixsearch_staging"."title", ''), '[^[:alnum:]]+',
    ' ', 'g')))))
FROM "pixsearch_staging"
ON CONFLICT ("id")
DO UPDATE SET "title" = EXCLUDED."title", "category" = EXCLUDED."category", "labels" = EXCLUDED."labels",
    "v" = EXCLUDED."v", "indexed_at" = EXCLUDED."indexed_at", "search_text" = EXCLUDED."search_text"
RETURNING "id";

-- TableWrites.write: some columns (title, v)
COPY "pixsearch_staging" ("id", "title", "v")
FROM STDIN (FORMAT BINARY);

-- TableWrites.write: some columns, inserting missing rows (mergeOrUpload)
INSERT INTO "px_lists" ("id", "title", "v", "indexed_at")
SELECT "id", "title", "v", now()
FROM "pixsearch_staging"
ON CONFLICT ("id")
DO UPDATE SET "title" = EXCLUDED."title", "v" = EXCLUDED."v", "indexed_at" = EXCLUDED."indexed_at"
RETURNING "id";

-- TableWrites.write: some columns of rows that exist (merge)
UPDATE "px_lists" AS t
SET "title" = s."title", "v" = s."v", indexed_at = now()
FROM "pixsearch_staging" AS s
WHERE t."id" = s."id"
RETURNING t."id";

-- TableWrites.write: merged rows: their keyword text
UPDATE "px_lists"
SET "search_text" = (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("px_lists"."title",
    ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("px_lists"."title",
    ''), '[^[:alnum:]]+', ' ', 'g')))))
WHERE "id" = ANY(%s);

-- TableWrites.update_rows: some columns of rows by key
UPDATE "px_lists"
SET "title" = %(title)s, "v" = %(v)s
WHERE "id" = %(_key)s;

-- TableWrites.delete
DELETE FROM "px_lists"
WHERE "id" = ANY(%s);

-- TableWrites.rekey: stage the moved rows
CREATE TEMP TABLE "pixsearch_rekeyed" ON COMMIT DROP AS
SELECT *
FROM "px_lists"
WHERE "id" = ANY(%s);

-- TableWrites.rekey: write one back under its new key
INSERT INTO "px_lists" ("id", "title", "v", "category", "labels", "indexed_at", "search_text")
SELECT %(new_0)s, %(new_1)s, %(new_2)s, "category", "labels", "indexed_at", "search_text"
FROM "pixsearch_rekeyed"
WHERE "id" = %(old)s;

-- TableWrites.rekey
DROP TABLE "pixsearch_rekeyed";

-- TableWrites.rebuild_text
UPDATE "px_lists"
SET "search_text" = (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("px_lists"."title",
    ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("px_lists"."title",
    ''), '[^[:alnum:]]+', ' ', 'g')))))
WHERE "id" = ANY(%s);

-- TableStats.count
SELECT count(*)
FROM "px_lists";

-- TableStats.count_vectors
SELECT count("v")
FROM "px_lists";

-- TableStats.count_missing
SELECT count(*)
FROM "px_lists"
WHERE "v" IS NULL;

-- TableStats.stats: table sizes
SELECT "pg_table_size"(%s::regclass), "pg_total_relation_size"(%s::regclass);

-- TableStats.stats: each ANN index's size
SELECT CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE "pg_relation_size"(to_regclass(%s)) END;

-- TableStats.analyze
ANALYZE "px_lists";
