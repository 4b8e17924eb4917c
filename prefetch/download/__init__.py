"""The download engine (`engine`), its inputs and outputs (`job`), fetching a file's bytes (`ranges`)
and checking the server's answers against the lock (`answer_checks`), the lane of small files (`lane`),
a second process for many of them (`helper`, the parent's side; `helper_child`, the process itself),
connections per host (`scheduler`), the partial files it writes resumably (`partial`) and small blobs
made durable in batches (`new_blobs`)."""
