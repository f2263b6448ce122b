{
  "targets": [
    {
      "target_name": "zaddon",
      "sources": ["zaddon.c"],
      "libraries": ["-lz"]
    }
  ]
}
