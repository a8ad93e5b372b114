"""Every bound on the work one request or one file may cause, in one place.

Front doors (CLI, REST API, page) and the service check against these same numbers; the README's Security section
lists them. Those a user may need to change are settings (config.py) with these as defaults.
"""
from __future__ import annotations

# -- searches ---------------------------------------------------------------------------------------------------------
MAX_TOP = 1000  # hits per page
MAX_WINDOW = 1000  # skip + top: ANN indexes return at most this many candidates per query
MAX_QUERY_CHARS = 1000  # search text, and each text vector query
MAX_QUERY_IDS = 100  # stored ids in one search, however they are given (ids:a,b,... text, `ids`, vector queries)
MAX_VECTOR_QUERIES = 10  # ranked lists fused in one search
MAX_QUERY_WEIGHT = 100  # a vector query's fusion weight
MAX_FACETS = 10  # facet requests per search
MAX_FACET_COUNT = 1000  # values per facet
MAX_FILTER_CHARS = 10_000  # an OData filter string
MAX_FILTER_DEPTH = 64  # nesting of parentheses / not / any() in a filter
# orderby and select name at most as many items as the index has fields (counted before anything is parsed), each
# of at most this many characters (field names have at most 40; room for ' desc' and spaces)
MAX_FIELD_LIST_ITEM_CHARS = 64

MAX_EVALUATION_QUERIES = 10_000  # stored vectors used as queries when recall is measured or tuned

# -- writes -----------------------------------------------------------------------------------------------------------
MAX_BATCH_DOCUMENTS = 1000  # documents per indexing request (Azure's limit)
MAX_UPLOAD_BYTES = 15 * 1024 * 1024  # per uploaded image
MAX_UPLOAD_FILES = 64  # images per upload request
MAX_BODY_BYTES = 16 * 1024 * 1024  # any request body

# -- files and pixels (defaults of settings max_file_mb and max_image_megapixels) ---------------------------------------
DEFAULT_MAX_FILE_BYTES = 200 * 1000 * 1000
DEFAULT_MAX_IMAGE_PIXELS = 50 * 1000 * 1000

# -- thumbnails and caches --------------------------------------------------------------------------------------------
THUMBNAIL_SIZES = (128, 256, 512, 1024)  # longest side in pixels; any other size is refused
DEFAULT_THUMBNAIL_CACHE_BYTES = 512 * 1024 * 1024  # on disk, per PIXSEARCH_HOME (setting thumbnail_cache_mb)
QUERY_VECTOR_CACHE_BYTES = 32 * 1024 * 1024  # recent query vectors kept in memory per server
QUERY_VECTOR_CACHE_ITEMS = 256

# -- concurrency --------------------------------------------------------------------------------------------------------
DEFAULT_POOL_SIZE = 4  # database connections per process (setting pool_size); README "Reliability" says why 4

# -- time -------------------------------------------------------------------------------------------------------------
DEFAULT_API_STATEMENT_TIMEOUT_S = 10.0  # per SQL statement of an API request (setting api_statement_timeout)
API_KEY_CACHE_SECONDS = 30.0  # a verified (or refused) stored key is trusted this long; revocation takes effect within it
# Near-duplicate groups one answer holds at most (CLI, REST, Python).
MAX_DUPLICATE_GROUPS = 1000
