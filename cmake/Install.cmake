# Install rules and the exported CMake package, so out-of-tree passes and
# programs can `find_package(mtc)` and link mtc::MtcDialect / mtc::runtime.
include(CMakePackageConfigHelpers)

install(DIRECTORY runtime/include/mtc DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mtc_runtime EXPORT mtcTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(TARGET mtc_runtime_cuda)
  install(TARGETS mtc_runtime_cuda EXPORT mtcTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
if(MTC_BUILD_COMPILER)
  install(DIRECTORY dialects/mtc/include/mtc compiler/include/mtc
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h" PATTERN "*.td")
  install(DIRECTORY ${PROJECT_BINARY_DIR}/dialects/mtc/include/mtc
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.inc")
  install(DIRECTORY ${PROJECT_BINARY_DIR}/compiler/include/mtc
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.inc")
  install(TARGETS MtcDialect MtcTransforms mtc_spec mtc_pipeline EXPORT mtcTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()

install(EXPORT mtcTargets NAMESPACE mtc:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mtc)
# The same package straight from the build tree: `mtc compile` builds
# generated programs against it (-Dmtc_DIR=<build dir>).
export(EXPORT mtcTargets FILE ${PROJECT_BINARY_DIR}/mtcTargets.cmake NAMESPACE mtc::)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/mtcConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mtcConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mtc)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mtcConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mtcConfig.cmake ${PROJECT_BINARY_DIR}/mtcConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mtc)
