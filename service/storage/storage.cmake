# The spill tier: durable page store (RocksDB with integrated BlobDB) and its test seams.
# Included from service/CMakeLists.txt.
target_sources(kvkeep_service PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/spill_store.cc
  ${CMAKE_CURRENT_LIST_DIR}/xxhash64.cc)

# The fault-injecting file system is a test seam: its own library, never linked into kvkeepd.
add_library(kvkeep_storage_testing STATIC ${CMAKE_CURRENT_LIST_DIR}/fault_env.cc)
target_link_libraries(kvkeep_storage_testing PUBLIC kvkeep_service)

kvkeep_test(spill_store_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spill_store_test.cc
            LIBS kvkeep_service kvkeep_storage_testing)
