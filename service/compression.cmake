# The compression component: query statistics of sequences, wire policy conversion, and in-place
# compression (scoring + compaction) of a sequence's pages. Included from service/CMakeLists.txt.
target_sources(kvkeep_service PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/sequence_stats.cc
  ${CMAKE_CURRENT_LIST_DIR}/policy_convert.cc
  ${CMAKE_CURRENT_LIST_DIR}/compressor.cc
  ${CMAKE_CURRENT_LIST_DIR}/head_reader.cc
  ${CMAKE_CURRENT_LIST_DIR}/device_scoring_request.cc)
target_link_libraries(kvkeep_service PUBLIC kvkeep_eviction kvkeep_device_scoring)

kvkeep_test(sequence_stats_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sequence_stats_test.cc
            LIBS kvkeep_service)
kvkeep_test(policy_convert_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/policy_convert_test.cc
            LIBS kvkeep_service)
kvkeep_test(compressor_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/compressor_test.cc
            LIBS kvkeep_service)
kvkeep_test(gpu_dtype_test SOURCES ${PROJECT_SOURCE_DIR}/gpu/math/dtype_test.cc LIBS kvkeep_common)
