// placeholder: filled in this session
#include <catch2/catch.hpp>
