"""The download engine (`engine`), its inputs and outputs (`job`) and the partial files it writes
resumably (`partial`)."""
