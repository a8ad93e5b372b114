-- SQL snapshot: distributed-photos. The HNSW photo index distributed on Citus (8 shards by its key), with regions colocated.
-- Generated: PIXSEARCH_UPDATE_SQL=1 pytest tests/test_sql_snapshots.py. Do not edit by hand.
-- Placeholders are bound parameters (%s by position, %(name)s by name); values never reach the SQL.

-- TableDefinition.create: the table
CREATE TABLE "px_photos" ("id" text PRIMARY KEY, "path" text, "folder" text, "filename" text, "content_hash" text,
    "size_bytes" bigint, "mtime_ns" bigint, "format" text, "width" bigint, "height" bigint, "taken_at" timestamptz,
    "taken_at_source" text, "camera" text, "camera_make" text, "camera_model" text, "lens" text,
    "gps_lat" double precision, "gps_lon" double precision, "title" text, "description" text, "keywords" text[],
    "generated_title" text, "generated_description" text, "generated_keywords" text[], "generated_by" text,
    "generated_from" text, "ocr_text" text, "ocr_boxes" text, "people" text[], "face_count" bigint,
    "companion_key" text, "sidecar_state" text, "layout" text, "class_ids" integer[], "class_probs" real[],
    "tags" text[], indexed_at timestamptz NOT NULL DEFAULT now(), "search_text" tsvector, "ocr_text_tsv" tsvector,
    "image" vector(1280), "semantic" vector(384), "caption" vector(384));

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_search_text_gin" ON "px_photos" USING gin ("search_text");

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_ocr_text_tsv_gin" ON "px_photos" USING gin ("ocr_text_tsv");

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_folder_trgm" ON "px_photos" USING gin ("folder" gin_trgm_ops);

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_filename_trgm" ON "px_photos" USING gin ("filename" gin_trgm_ops);

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_title_trgm" ON "px_photos" USING gin ("title" gin_trgm_ops);

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_description_trgm" ON "px_photos" USING gin ("description" gin_trgm_ops);

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_generated_title_trgm" ON "px_photos" USING gin ("generated_title" gin_trgm_ops);

-- TableDefinition.create_keyword_indexes: keyword search indexes
CREATE INDEX IF NOT EXISTS "px_photos_generated_description_trgm" ON "px_photos" USING gin ("generated_description" gin_trgm_ops);

-- TableDefinition.create: the listing's b-tree
CREATE INDEX "px_photos_browse" ON "px_photos" ("taken_at" DESC NULLS LAST, indexed_at DESC, "id");

-- TableDefinition.create_lookup_indexes: does the lookup index exist
SELECT to_regclass(%s);

-- TableDefinition.create_lookup_indexes: the lookup b-tree of content_hash
CREATE INDEX IF NOT EXISTS "px_photos_content_hash" ON "px_photos" ("content_hash");

-- TableDefinition.create (HNSW) and build_index: the ANN index of image
CREATE INDEX "px_photos_image_hnsw" ON "px_photos" USING hnsw ("image" vector_cosine_ops) WITH ("m" = 16,
    "ef_construction" = 64);

-- TableDefinition.build_index / drop_ann_index: the ANN index of image
DROP INDEX IF EXISTS "px_photos_image_hnsw";

-- TableDefinition.create (HNSW) and build_index: the ANN index of semantic
CREATE INDEX "px_photos_semantic_hnsw" ON "px_photos" USING hnsw ("semantic" vector_cosine_ops) WITH ("m" = 16,
    "ef_construction" = 64);

-- TableDefinition.build_index / drop_ann_index: the ANN index of semantic
DROP INDEX IF EXISTS "px_photos_semantic_hnsw";

-- TableDefinition.create (HNSW) and build_index: the ANN index of caption
CREATE INDEX "px_photos_caption_hnsw" ON "px_photos" USING hnsw ("caption" vector_cosine_ops) WITH ("m" = 16,
    "ef_construction" = 64);

-- TableDefinition.build_index / drop_ann_index: the ANN index of caption
DROP INDEX IF EXISTS "px_photos_caption_hnsw";

-- TableDefinition.build_index: the build's memory and workers
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL "maintenance_work_mem" = '1024MB';
SET LOCAL "max_parallel_maintenance_workers" = '3';

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_photos" ADD COLUMN IF NOT EXISTS "tags" text[];

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_photos" ADD COLUMN IF NOT EXISTS "caption" vector(384);

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_photos" ADD COLUMN IF NOT EXISTS "search_text" tsvector;

-- TableDefinition.add_columns: a field, a vector field, the keyword text columns
ALTER TABLE "px_photos" ADD COLUMN IF NOT EXISTS "ocr_text_tsv" tsvector;

-- TableDefinition.drop_columns: one column
ALTER TABLE "px_photos" DROP COLUMN IF EXISTS "caption";

-- TableDefinition.lock_against_writes: before a definition change checks the rows
LOCK TABLE "px_photos" IN SHARE ROW EXCLUSIVE MODE;

-- TableDefinition.ann_indexes_ready
SELECT c.relname, i.indisvalid
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = to_regclass(%s);

-- TableDefinition.build_progress
SELECT result
FROM run_command_on_workers($$SELECT coalesce(json_agg(json_build_object('phase', phase, 'blocks_done', blocks_done, 'blocks_total', blocks_total, 'tuples_done', tuples_done, 'tuples_total', tuples_total)), '[]') FROM pg_stat_progress_create_index$$)
WHERE success;

-- TableDefinition.rename_to: the table
ALTER TABLE "px_photos" RENAME TO "px_photos_renamed";

-- TableDefinition.rename_to: its indexes
SELECT indexname
FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = %s;

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_image_hnsw" RENAME TO "px_photos_renamed_image_hnsw";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_semantic_hnsw" RENAME TO "px_photos_renamed_semantic_hnsw";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_caption_hnsw" RENAME TO "px_photos_renamed_caption_hnsw";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_search_text_gin" RENAME TO "px_photos_renamed_search_text_gin";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_ocr_text_tsv_gin" RENAME TO "px_photos_renamed_ocr_text_tsv_gin";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_folder_trgm" RENAME TO "px_photos_renamed_folder_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_filename_trgm" RENAME TO "px_photos_renamed_filename_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_title_trgm" RENAME TO "px_photos_renamed_title_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_description_trgm" RENAME TO "px_photos_renamed_description_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_generated_title_trgm" RENAME TO "px_photos_renamed_generated_title_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_generated_description_trgm" RENAME TO "px_photos_renamed_generated_description_trgm";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_browse" RENAME TO "px_photos_renamed_browse";

-- TableDefinition.rename_to: an index named after the table
ALTER INDEX "px_photos_content_hash" RENAME TO "px_photos_renamed_content_hash";

-- registry.create_index / distribute_index: shard the table by its key
SELECT create_distributed_table(%s, %s, shard_count => %s);

-- registry.delete_index
DROP TABLE IF EXISTS "px_photos";

-- VectorQueries.search: plain, in a snapshot or a transaction of its own
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL "enable_indexscan" = 'on';
SET LOCAL "hnsw"."ef_search" = '40';
SET LOCAL "hnsw"."iterative_scan" = 'off';

-- VectorQueries.search: plain kNN of image
SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
    "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "title",
    "description", "keywords", "generated_title", "generated_description", "generated_keywords",
    "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags", "image" <=> %(q)s AS distance
FROM "px_photos"
ORDER BY "image" <=> %(q)s
LIMIT %(k)s;

-- VectorQueries.search: filtered, in a snapshot or a transaction of its own
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL "enable_indexscan" = 'on';
SET LOCAL "hnsw"."ef_search" = '40';
SET LOCAL "hnsw"."iterative_scan" = 'relaxed_order';
SET LOCAL "hnsw"."max_scan_tuples" = '20000';

-- VectorQueries.search: filtered kNN of image
WITH hits AS MATERIALIZED (
  SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
      "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon",
      "title", "description", "keywords", "generated_title", "generated_description", "generated_keywords",
      "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags",
      "image" <=> %(q)s AS distance
  FROM "px_photos"
  WHERE ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
  ORDER BY "image" <=> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.search: exact, in a snapshot or a transaction of its own
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL "enable_indexscan" = 'off';

-- VectorQueries.search: exact kNN of image
WITH hits AS MATERIALIZED (
  SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
      "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon",
      "title", "description", "keywords", "generated_title", "generated_description", "generated_keywords",
      "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags",
      "image" <=> %(q)s AS distance
  FROM "px_photos"
  WHERE ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
  ORDER BY "image" <=> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.search: why a search came back short
SELECT count(*)
FROM (
  SELECT 1
  FROM "px_photos"
  WHERE "image" IS NOT NULL AND ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
  LIMIT %(limit)s) AS matching;

-- VectorQueries.explain: every shard's plan
--   bound to: citus.explain_all_tasks = on
SELECT set_config(%s, %s, true);

-- VectorQueries.explain
EXPLAIN WITH hits AS MATERIALIZED (
  SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
      "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon",
      "title", "description", "keywords", "generated_title", "generated_description", "generated_keywords",
      "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags",
      "image" <=> %(q)s AS distance
  FROM "px_photos"
  WHERE ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
  ORDER BY "image" <=> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;

-- VectorQueries.near_pairs: row by row on Citus: each row's vector, then search()
SELECT "id", "image"
FROM "px_photos"
WHERE "image" IS NOT NULL
ORDER BY "id";

-- VectorQueries.iter_vectors: an export, through a server-side cursor
SELECT "id", "image"
FROM "px_photos"
WHERE "image" IS NOT NULL
ORDER BY "id";

-- VectorQueries.sample_vectors
SELECT setseed(%s);

-- VectorQueries.sample_vectors
SELECT "id", "image"
FROM "px_photos"
WHERE "image" IS NOT NULL
ORDER BY random()
LIMIT %s;

-- TableQueries.keyword_search: the general keyword list, filtered
SELECT "id", coalesce(ts_rank_cd("search_text", websearch_to_tsquery('english', unaccent(%(any_word)s))),
    0) + greatest(coalesce(word_similarity(%(text)s, "folder"), 0), coalesce(word_similarity(%(text)s,
    "filename"), 0), coalesce(word_similarity(%(text)s, "title"), 0), coalesce(word_similarity(%(text)s,
    "description"), 0), coalesce(word_similarity(%(text)s, "generated_title"), 0), coalesce(word_similarity(%(text)s,
    "generated_description"), 0)) AS score
FROM "px_photos"
WHERE ("search_text" @@ websearch_to_tsquery('english', unaccent(%(any_word)s)) OR %(text)s <%% "folder" OR %(text)s <%% "filename" OR %(text)s <%% "title" OR %(text)s <%% "description" OR %(text)s <%% "generated_title" OR %(text)s <%% "generated_description") AND ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
ORDER BY score DESC, "id"
LIMIT %(limit)s;

-- TableQueries.keyword_search: the 'ocr' keyword list
SELECT "id", coalesce(ts_rank_cd("ocr_text_tsv", websearch_to_tsquery('english', unaccent(%(any_word)s))),
    0) + 0 AS score
FROM "px_photos"
WHERE ("ocr_text_tsv" @@ websearch_to_tsquery('english', unaccent(%(any_word)s)))
ORDER BY score DESC, "id"
LIMIT %(limit)s;

-- TableQueries.browse: one page, filtered
SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
    "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "title",
    "description", "keywords", "generated_title", "generated_description", "generated_keywords",
    "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags"
FROM "px_photos"
WHERE ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])
ORDER BY "taken_at" DESC NULLS LAST, indexed_at DESC, "id"
LIMIT %(limit)s OFFSET %(offset)s;

-- TableQueries.browse: how many pass the filter
SELECT count(*)
FROM "px_photos"
WHERE ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s]);

-- TableQueries.facet_counts: folder, filtered
SELECT value, count(*) AS n
FROM (
  SELECT "folder" AS value
  FROM "px_photos"
  WHERE "folder" IS NOT NULL AND ("taken_at" >= %(f0)s AND "tags" @> ARRAY[%(f1)s])) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: taken_at by month, among some keys
SELECT value, count(*) AS n
FROM (
  SELECT date_trunc('month', "taken_at" AT TIME ZONE 'UTC') AS value
  FROM "px_photos"
  WHERE "taken_at" IS NOT NULL AND "id" = ANY(%(facet_ids)s)) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: keywords: each element
SELECT value, count(*) AS n
FROM (
  SELECT unnest("keywords") AS value
  FROM "px_photos"
  WHERE "keywords" IS NOT NULL) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: generated_keywords: each element
SELECT value, count(*) AS n
FROM (
  SELECT unnest("generated_keywords") AS value
  FROM "px_photos"
  WHERE "generated_keywords" IS NOT NULL) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: people: each element
SELECT value, count(*) AS n
FROM (
  SELECT unnest("people") AS value
  FROM "px_photos"
  WHERE "people" IS NOT NULL) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.facet_counts: tags: each element
SELECT value, count(*) AS n
FROM (
  SELECT unnest("tags") AS value
  FROM "px_photos"
  WHERE "tags" IS NOT NULL) AS v
WHERE value IS NOT NULL
GROUP BY value
ORDER BY n DESC, value
LIMIT %(facet_limit)s;

-- TableQueries.fetch: retrievable fields by key
SELECT "id", "path", "folder", "filename", "size_bytes", "format", "width", "height", "taken_at",
    "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "title",
    "description", "keywords", "generated_title", "generated_description", "generated_keywords",
    "generated_by", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key", "tags"
FROM "px_photos"
WHERE "id" = ANY(%s);

-- TableQueries.keys_missing: the first batch of a re-index
SELECT "id", "path"
FROM "px_photos"
WHERE ("caption" IS NULL)
ORDER BY "id"
LIMIT %(limit)s;

-- TableQueries.keys_missing: the next batches
SELECT "id"
FROM "px_photos"
WHERE ("caption" IS NULL) AND "id" > %(after)s
ORDER BY "id"
LIMIT %(limit)s;

-- TableQueries.select: photos.stored_states
SELECT "id", "path", "size_bytes", "mtime_ns", "content_hash", "sidecar_state"
FROM "px_photos"
WHERE "id" = ANY(%s);

-- TableQueries.rows_where_in: photos.same_content: a batch's content hashes
SELECT "id", "content_hash", "path", "size_bytes", "mtime_ns", "sidecar_state"
FROM "px_photos"
WHERE "content_hash" = ANY(%s);

-- TableQueries.rows_where_prefix: photos.paths_under
SELECT "id", "path"
FROM "px_photos"
WHERE starts_with("path", %s);

-- TableQueries.rows_where_like: photos.paths_not_normal: paths an older release may have misspelled
SELECT "id", "path", "size_bytes", "mtime_ns", "content_hash", "sidecar_state"
FROM "px_photos"
WHERE "path" LIKE ANY(%s) AND NOT "path" LIKE ANY(%s);

-- TableQueries.distinct_values: a photo index's folders
SELECT DISTINCT "folder"
FROM "px_photos"
WHERE "folder" IS NOT NULL;

-- TableQueries.not_captioned: the first page of photos to caption (service/captioning.py)
SELECT "id", "path", "content_hash"
FROM "px_photos"
WHERE "generated_from" IS DISTINCT
FROM (%(settings)s || ':' || "content_hash")
ORDER BY "id"
LIMIT %(limit)s;

-- TableQueries.not_captioned: the next pages
SELECT "id"
FROM "px_photos"
WHERE "generated_from" IS DISTINCT
FROM (%(settings)s || ':' || "content_hash") AND "id" > %(after)s
ORDER BY "id"
LIMIT %(limit)s;

-- TableQueries.count_not_captioned
SELECT count(*)
FROM "px_photos"
WHERE "generated_from" IS DISTINCT
FROM (%(settings)s || ':' || "content_hash");

-- TableWrites.write: the staging table
CREATE TEMP TABLE "pixsearch_staging" (LIKE "px_photos" INCLUDING DEFAULTS) ON COMMIT DROP;

-- TableWrites.write: whole documents
COPY "pixsearch_staging" ("id", "path", "folder", "filename", "content_hash", "size_bytes", "mtime_ns",
    "format", "width", "height", "taken_at", "taken_at_source", "camera", "camera_make", "camera_model",
    "lens", "gps_lat", "gps_lon", "title", "description", "keywords", "generated_title", "generated_description",
    "generated_keywords", "generated_by", "generated_from", "ocr_text", "ocr_boxes", "people", "face_count",
    "companion_key", "sidecar_state", "layout", "class_ids", "class_probs", "tags", "image", "semantic",
    "caption")
FROM STDIN (FORMAT BINARY);

-- TableWrites.write: whole documents: upsert
INSERT INTO "px_photos" ("id", "path", "folder", "filename", "content_hash", "size_bytes", "mtime_ns",
    "format", "width", "height", "taken_at", "taken_at_source", "camera", "camera_make", "camera_model",
    "lens", "gps_lat", "gps_lon", "title", "description", "keywords", "generated_title", "generated_description",
    "generated_keywords", "generated_by", "generated_from", "ocr_text", "ocr_boxes", "people", "face_count",
    "companion_key", "sidecar_state", "layout", "class_ids", "class_probs", "tags", "image", "semantic",
    "caption", "indexed_at", "search_text", "ocr_text_tsv")
SELECT "id", "path", "folder", "filename", "content_hash", "size_bytes", "mtime_ns", "format", "width",
    "height", "taken_at", "taken_at_source", "camera", "camera_make", "camera_model", "lens", "gps_lat",
    "gps_lon", "title", "description", "keywords", "generated_title", "generated_description", "generated_keywords",
    "generated_by", "generated_from", "ocr_text", "ocr_boxes", "people", "face_count", "companion_key",
    "sidecar_state", "layout", "class_ids", "class_probs", "tags", "image", "semantic", "caption",
    now(), (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("pixsearch_staging"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."filename", ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."title", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."description", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."keywords", ' '), ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."generated_title", ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("pixsearch_staging"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."filename", ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."title", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."description", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."keywords", ' '), ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."generated_title", ''),
    '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("pixsearch_staging"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("pixsearch_staging"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'))))), (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("pixsearch_staging"."ocr_text",
    ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("pixsearch_staging"."ocr_text",
    ''), '[^[:alnum:]]+', ' ', 'g')))))
FROM "pixsearch_staging"
ON CONFLICT ("id")
DO UPDATE SET "path" = EXCLUDED."path", "folder" = EXCLUDED."folder", "filename" = EXCLUDED."filename",
    "content_hash" = EXCLUDED."content_hash", "size_bytes" = EXCLUDED."size_bytes", "mtime_ns" = EXCLUDED."mtime_ns",
    "format" = EXCLUDED."format", "width" = EXCLUDED."width", "height" = EXCLUDED."height", "taken_at" = EXCLUDED."taken_at",
    "taken_at_source" = EXCLUDED."taken_at_source", "camera" = EXCLUDED."camera", "camera_make" = EXCLUDED."camera_make",
    "camera_model" = EXCLUDED."camera_model", "lens" = EXCLUDED."lens", "gps_lat" = EXCLUDED."gps_lat",
    "gps_lon" = EXCLUDED."gps_lon", "title" = EXCLUDED."title", "description" = EXCLUDED."description",
    "keywords" = EXCLUDED."keywords", "generated_title" = EXCLUDED."generated_title", "generated_description" = EXCLUDED."generated_description",
    "generated_keywords" = EXCLUDED."generated_keywords", "generated_by" = EXCLUDED."generated_by",
    "generated_from" = EXCLUDED."generated_from", "ocr_text" = EXCLUDED."ocr_text", "ocr_boxes" = EXCLUDED."ocr_boxes",
    "people" = EXCLUDED."people", "face_count" = EXCLUDED."face_count", "companion_key" = EXCLUDED."companion_key",
    "sidecar_state" = EXCLUDED."sidecar_state", "layout" = EXCLUDED."layout", "class_ids" = EXCLUDED."class_ids",
    "class_probs" = EXCLUDED."class_probs", "tags" = EXCLUDED."tags", "image" = EXCLUDED."image",
    "semantic" = EXCLUDED."semantic", "caption" = EXCLUDED."caption", "indexed_at" = EXCLUDED."indexed_at",
    "search_text" = EXCLUDED."search_text", "ocr_text_tsv" = EXCLUDED."ocr_text_tsv"
RETURNING "id";

-- TableWrites.write: some columns (title, description, keywords, sidecar_state, caption)
COPY "pixsearch_staging" ("id", "title", "description", "keywords", "sidecar_state", "caption")
FROM STDIN (FORMAT BINARY);

-- TableWrites.write: some columns, inserting missing rows (mergeOrUpload)
INSERT INTO "px_photos" ("id", "title", "description", "keywords", "sidecar_state", "caption", "indexed_at")
SELECT "id", "title", "description", "keywords", "sidecar_state", "caption", now()
FROM "pixsearch_staging"
ON CONFLICT ("id")
DO UPDATE SET "title" = EXCLUDED."title", "description" = EXCLUDED."description", "keywords" = EXCLUDED."keywords",
    "sidecar_state" = EXCLUDED."sidecar_state", "caption" = EXCLUDED."caption", "indexed_at" = EXCLUDED."indexed_at"
RETURNING "id";

-- TableWrites.write: some columns of rows that exist (merge)
UPDATE "px_photos" AS t
SET "title" = s."title", "description" = s."description", "keywords" = s."keywords", "sidecar_state" = s."sidecar_state",
    "caption" = s."caption", indexed_at = now()
FROM "pixsearch_staging" AS s
WHERE t."id" = s."id"
RETURNING t."id";

-- TableWrites.write: merged rows: their keyword text
UPDATE "px_photos"
SET "search_text" = (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("px_photos"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."filename", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("px_photos"."title", ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_title",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("px_photos"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."filename", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("px_photos"."title", ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_title",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g')))))
WHERE "id" = ANY(%s);

-- TableWrites.update_rows: some columns of rows by key
UPDATE "px_photos"
SET "title" = %(title)s, "description" = %(description)s
WHERE "id" = %(_key)s;

-- TableWrites.delete
DELETE FROM "px_photos"
WHERE "id" = ANY(%s);

-- TableWrites.rekey: stage the moved rows
CREATE TEMP TABLE "pixsearch_rekeyed" ON COMMIT DROP AS
SELECT *
FROM "px_photos"
WHERE "id" = ANY(%s);

-- TableWrites.rekey: write one back under its new key
INSERT INTO "px_photos" ("id", "path", "folder", "filename", "size_bytes", "mtime_ns", "companion_key",
    "content_hash", "format", "width", "height", "taken_at", "taken_at_source", "camera", "camera_make",
    "camera_model", "lens", "gps_lat", "gps_lon", "title", "description", "keywords", "generated_title",
    "generated_description", "generated_keywords", "generated_by", "generated_from", "ocr_text",
    "ocr_boxes", "people", "face_count", "sidecar_state", "layout", "class_ids", "class_probs",
    "tags", "indexed_at", "search_text", "ocr_text_tsv", "image", "semantic", "caption")
SELECT %(new_0)s, %(new_1)s, %(new_2)s, %(new_3)s, %(new_4)s, %(new_5)s, %(new_6)s, "content_hash",
    "format", "width", "height", "taken_at", "taken_at_source", "camera", "camera_make", "camera_model",
    "lens", "gps_lat", "gps_lon", "title", "description", "keywords", "generated_title", "generated_description",
    "generated_keywords", "generated_by", "generated_from", "ocr_text", "ocr_boxes", "people", "face_count",
    "sidecar_state", "layout", "class_ids", "class_probs", "tags", "indexed_at", "search_text",
    "ocr_text_tsv", "image", "semantic", "caption"
FROM "pixsearch_rekeyed"
WHERE "id" = %(old)s;

-- TableWrites.rekey
DROP TABLE "pixsearch_rekeyed";

-- TableWrites.rebuild_text
UPDATE "px_photos"
SET "search_text" = (to_tsvector('simple', unaccent(concat_ws(' ', regexp_replace(coalesce("px_photos"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."filename", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("px_photos"."title", ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_title",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english', unaccent(concat_ws(' ', regexp_replace(coalesce("px_photos"."folder",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."filename", ''), '[^[:alnum:]]+',
    ' ', 'g'), regexp_replace(coalesce("px_photos"."title", ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_title",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce("px_photos"."generated_description",
    ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."generated_keywords",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'), regexp_replace(coalesce(array_to_string("px_photos"."tags",
    ' '), ''), '[^[:alnum:]]+', ' ', 'g'))))), "ocr_text_tsv" = (to_tsvector('simple', unaccent(concat_ws(' ',
    regexp_replace(coalesce("px_photos"."ocr_text", ''), '[^[:alnum:]]+', ' ', 'g')))) || to_tsvector('english',
    unaccent(concat_ws(' ', regexp_replace(coalesce("px_photos"."ocr_text", ''), '[^[:alnum:]]+',
    ' ', 'g')))))
WHERE "id" = ANY(%s);

-- TableStats.count
SELECT count(*)
FROM "px_photos";

-- TableStats.count_vectors
SELECT count("image")
FROM "px_photos";

-- TableStats.count_missing
SELECT count(*)
FROM "px_photos"
WHERE "caption" IS NULL;

-- TableStats.stats: table sizes
SELECT "citus_table_size"(%s::regclass), "citus_total_relation_size"(%s::regclass);

-- TableStats.stats: each ANN index's size
SELECT CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE "citus_relation_size"(to_regclass(%s)) END;

-- TableStats.stats: shards and nodes
SELECT count(*), count(DISTINCT (nodename, nodeport))
FROM citus_shards
WHERE table_name = %s::regclass;

-- TableStats.analyze
ANALYZE "px_photos";

-- RegionTable.create: the table (then its indexes, as any index table's)
CREATE TABLE "px_photos_regions" ("id" text PRIMARY KEY, "photo_key" text, "region" text, "x0" bigint,
    "y0" bigint, "x1" bigint, "y1" bigint, "label" text, "score" double precision, "source" text,
    indexed_at timestamptz NOT NULL DEFAULT now(), "image" vector(1280), "semantic" vector(384));

-- RegionTable.create: the key: (photo key, region key)
ALTER TABLE "px_photos_regions" DROP CONSTRAINT "px_photos_regions_pkey";

-- RegionTable.create: the key: (photo key, region key)
ALTER TABLE "px_photos_regions" ADD PRIMARY KEY ("photo_key", "id");

-- RegionTable.create
CREATE INDEX "px_photos_regions_label" ON "px_photos_regions" ("label");

-- RegionTable.create: colocated with the photos
SELECT create_distributed_table(%s, %s, colocate_with => %s);

-- RegionTable.create
ALTER TABLE "px_photos_regions" ADD CONSTRAINT "px_photos_regions_photo_fk" FOREIGN KEY ("photo_key") REFERENCES "px_photos" ("id") ON DELETE CASCADE;

-- RegionTable.replace_photos
DELETE FROM "px_photos_regions"
WHERE "photo_key" = ANY(%s) AND source = %s;

-- RegionTable.replace_photos: write: upsert
INSERT INTO "px_photos_regions" ("id", "photo_key", "region", "x0", "y0", "x1", "y1", "label", "score",
    "source", "image", "semantic", "indexed_at")
SELECT "id", "photo_key", "region", "x0", "y0", "x1", "y1", "label", "score", "source", "image", "semantic", now()
FROM "pixsearch_staging"
ON CONFLICT ("photo_key", "id")
DO UPDATE SET "photo_key" = EXCLUDED."photo_key", "region" = EXCLUDED."region", "x0" = EXCLUDED."x0",
    "y0" = EXCLUDED."y0", "x1" = EXCLUDED."x1", "y1" = EXCLUDED."y1", "label" = EXCLUDED."label",
    "score" = EXCLUDED."score", "source" = EXCLUDED."source", "image" = EXCLUDED."image", "semantic" = EXCLUDED."semantic",
    "indexed_at" = EXCLUDED."indexed_at"
RETURNING "id";

-- RegionTable.stage_photos
CREATE TEMP TABLE "pixsearch_staged_regions" ON COMMIT DROP AS
SELECT *
FROM "px_photos_regions"
WHERE "photo_key" = ANY(%s);

-- RegionTable.restore_photos
INSERT INTO "px_photos_regions" ("id", "photo_key", "region", "x0", "y0", "x1", "y1", "label", "score",
    "source", "indexed_at", "image", "semantic")
SELECT %(new)s || ':' || region, %(new)s, "region", "x0", "y0", "x1", "y1", "label", "score", "source",
    "indexed_at", "image", "semantic"
FROM "pixsearch_staged_regions"
WHERE "photo_key" = %(old)s;

-- RegionTable.search: in a snapshot
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL "enable_indexscan" = 'on';
SET LOCAL "hnsw"."ef_search" = '40';
SET LOCAL "hnsw"."iterative_scan" = 'off';

-- RegionTable.search: kNN of regions with a label
WITH hits AS MATERIALIZED (
  SELECT "id", "photo_key", "region", "x0", "y0", "x1", "y1", "label", "score", "source", "image" <=> %(q)s AS distance
  FROM "px_photos_regions"
  WHERE "label" = %(f0)s
  ORDER BY "image" <=> %(q)s
  LIMIT %(k)s)
SELECT *
FROM hits
ORDER BY distance;
